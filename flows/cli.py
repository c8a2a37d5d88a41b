"""The ``uniadc`` command line. Bad input ends with one line naming the file or field, and exit code 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

for _key, _value in (
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("DO_NOT_TRACK", "1"),
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
    ("HF_HUB_OFFLINE", "1"),
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),  # transformers' "Loading weights" bars: noise between our own bars
):
    os.environ.setdefault(_key, _value)

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from flows.server import ServerError  # noqa: E402
from schemas.config import ConfigError, RunConfig, load_run_config  # noqa: E402
from schemas.priors import PriorsError, load_priors  # noqa: E402
from storage.checkpoints import CheckpointError  # noqa: E402
from storage.errors import DataError, StoreError  # noqa: E402
from uniadc.synthesis.runtime import WeightsError  # noqa: E402

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="uniadc: unified anomaly detection and classification pipeline.",
    context_settings=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
priors_app = typer.Typer(help="Anomaly prior files.", no_args_is_help=True, context_settings=HELP)
data_app = typer.Typer(
    help="Datasets: inspect, split, build the demo.", no_args_is_help=True, context_settings=HELP
)
store_app = typer.Typer(
    help="Run stores: remove what no completed run needs.", no_args_is_help=True, context_settings=HELP
)
server_app = typer.Typer(
    help="The monitored setup: a persistent Prefect server, work pool, workers and deployments.",
    no_args_is_help=True,
    context_settings=HELP,
)
app.add_typer(server_app, name="server")
app.add_typer(priors_app, name="priors")
app.add_typer(store_app, name="store")
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)

USER_ERRORS = (ServerError, ConfigError, PriorsError, DataError, StoreError, WeightsError, CheckpointError)
_DEBUG = {"on": os.environ.get("UNIADC_DEBUG", "") not in ("", "0")}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"uniadc {version('uniadc')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of an unexpected error")] = False,
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """uniadc: unified anomaly detection and classification pipeline."""
    _DEBUG["on"] = _DEBUG["on"] or debug
    if not _DEBUG["on"]:
        from tasks.common import quiet_task_tracebacks

        quiet_task_tracebacks()


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="run config YAML")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: dotted.key=value (repeatable)")]


def os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` for an operating-system error (disk full, permission, missing file)."""
    reason = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p]
    return f"{' -> '.join(map(str, paths))}: {reason}" if paths else reason


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input: one line on stderr and exit code 2. Operating-system errors at run time (disk full, no
    permission): one line naming the path and exit code 1. ``--debug`` shows the traceback instead."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if _DEBUG["on"]:
                raise
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if _DEBUG["on"]:
                raise
            err.print(
                f"[bold red]error:[/] {os_error_line(exc)}", markup=True, highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None

    return wrapper


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


@contextmanager
def reporting_server(config: RunConfig) -> Iterator[None]:
    """Report into the server ``uniadc server start`` left running when PREFECT_API_URL is not set; a Dask run
    with no server up gets a private one for its length; otherwise Prefect's ephemeral server."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import private_server, running_server

    state = running_server()
    if state is not None:
        err.print(f"reporting to the Prefect server at {state.ui_url} (uniadc server start)", highlight=False)
        with temporary_settings(updates={PREFECT_API_URL: state.api_url}):
            yield
    elif config.runner.kind == "dask":
        err.print("runner.kind=dask and no server is up (uniadc server start): starting one for this run")
        with private_server() as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield
    else:
        yield


def load_config(config: Path, overrides: list[str] | None, store: str | None = None) -> RunConfig:
    extra = list(overrides or [])
    if store is not None:
        extra.append(f"store={store}")
    return load_run_config(config, extra)


def preflight(config: RunConfig) -> None:
    """Everything decidable before work starts: dataset folder, priors, weights (paths, configs and weight-file
    headers), the store is writable, pool sizes against ``k_normal``/``k_anomaly``, and every image and mask."""
    from storage.datasets import scan_dataset
    from storage.files import check_writable
    from storage.layout import RunLayout
    from storage.priors import load_run_priors
    from storage.split import draw_split
    from storage.validate import check_records

    if not Path(config.dataset.root).is_dir():
        raise DataError(f"dataset.root: {config.dataset.root}: no such folder")
    priors = load_run_priors(config)
    if config.support.foreground == "onnx":
        from uniadc.foreground import check_onnx_model

        check_onnx_model(config.support.foreground_onnx, "support.foreground_onnx")
    backend = config.synthesis.resolved_backend(config.setting)
    if backend in ("sd-inpaint", "brushnet"):
        from uniadc.synthesis.diffusion import check_weights

        check_weights(backend, config.synthesis.diffusion)
    if config.selection.resolved_scorer(backend) == "clip-region":
        from uniadc.selection_clip import check_weights as check_clip

        check_clip(config.selection)
    from uniadc.discriminator.clip import check_clip_weights

    check_clip_weights(config.discriminator)
    from uniadc.discriminator.dinov3 import check_dino_weights

    check_dino_weights(config.discriminator)
    check_writable(RunLayout.for_run(config).root)
    records = scan_dataset(config.dataset.kind, config.dataset.root, config.dataset.image_class, priors.names)
    draw_split(records, config)
    with progress() as bar:
        job = bar.add_task(f"checking {len(records)} images", total=len(records))
        check_records(records, advance=lambda: bar.advance(job))


@priors_app.command("validate")
@user_errors
def priors_validate(
    paths: Annotated[list[Path], typer.Argument(help="priors YAML files or folders")],
) -> None:
    """Validate priors files (folders are searched for *.yaml)."""
    files: list[Path] = []
    for p in paths:
        files += sorted(p.rglob("*.yaml")) if p.is_dir() else [p]
    if not files:
        raise PriorsError(f"{', '.join(map(str, paths))}: no priors YAML files found")
    for f in files:
        pf = load_priors(f)
        console.print(
            f"ok  {f}: {pf.dataset}/{pf.image_class}, {len(pf.categories)} categories "
            f"({', '.join(pf.names)})",
            highlight=False,
        )


@data_app.command("inspect")
@user_errors
def data_inspect(
    kind: Annotated[str, typer.Option(help="layout: mvtec, mtd or demo")],
    root: Annotated[Path, typer.Option(help="dataset root folder")],
    image_class: Annotated[
        str | None, typer.Option("--image-class", help="image class (mvtec, demo)")
    ] = None,
) -> None:
    """Count images per category and report image sizes; decodes every file."""
    from storage.datasets import scan_dataset
    from storage.validate import check_records

    records = scan_dataset(kind, root, image_class)
    with progress() as bar:
        job = bar.add_task(f"reading {len(records)} images", total=len(records))
        stats = check_records(records, advance=lambda: bar.advance(job))
    table = Table(title=f"{kind} dataset at {root}" + (f" / {image_class}" if image_class else ""))
    table.add_column("category")
    table.add_column("images", justify="right")
    table.add_column("mean defect area %", justify="right")
    from storage.datasets import NORMAL

    normal_name = f"{NORMAL} (MT_Free)" if kind == "mtd" else f"{NORMAL} (good)"
    for name, count in sorted(stats.counts.items(), key=lambda kv: (kv[0] == NORMAL, kv[0])):
        frac = stats.defect_fraction.get(name)
        shown = normal_name if name == NORMAL else name
        table.add_row(shown, str(count), f"{100 * sum(frac) / len(frac):.2f}" if frac else "-")
    console.print(table)
    console.print(f"{sum(stats.counts.values())} images; {stats.size_summary()}", highlight=False)


@data_app.command("split")
@user_errors
def data_split(config: ConfigOpt, overrides: SetOpt = None) -> None:
    """Draw and write the seeded support/test split of a run config."""
    cfg = load_config(config, overrides)
    preflight(cfg)
    from flows.data import split_flow

    split_flow(cfg)


@data_app.command("demo")
@user_errors
def data_demo(
    root: Annotated[Path, typer.Option(help="where to build the demo dataset")] = Path("demo_data"),
    seed: int = 0,
    force: bool = False,
) -> None:
    """Build the offline demo dataset (MVTec layout) from scikit-image's bundled textures."""
    from storage.demo import build_demo_dataset

    if root.exists() and not force:
        console.print(f"demo dataset already at {root} (use --force to rebuild)")
        return
    summary = build_demo_dataset(root, seed=seed)
    folders = list(next(iter(summary["classes"].values())))
    table = Table(
        title=f"demo dataset written to {root} ({summary['image_size']} px, seed {summary['seed']})"
    )
    table.add_column("image class")
    for folder in folders:
        table.add_column(folder, justify="right")
    for cls, counts in summary["classes"].items():
        table.add_row(cls, *(str(counts[f]) for f in folders))
    console.print(table)
    console.print(f"{summary['n_images']} images, {summary['n_masks']} masks", highlight=False)


StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store", help="output store: a folder or a URL such as s3://bucket/prefix (overrides the config)"
    ),
]


@app.command("regenerate")
@user_errors
def regenerate(config: ConfigOpt, store: StoreOpt = None, overrides: SetOpt = None) -> None:
    """Synthesise and select category-specific defects (split -> support -> per-category samples)."""
    cfg = load_config(config, overrides, store)
    preflight(cfg)
    from flows.regenerate import regenerate_flow
    from flows.runner import with_runner

    with reporting_server(cfg):
        with_runner(regenerate_flow, cfg)(cfg)


@app.command("run")
@user_errors
def run(config: ConfigOpt, store: StoreOpt = None, overrides: SetOpt = None) -> None:
    """The whole pipeline: split -> support -> regenerate -> train -> evaluate -> report.html."""
    cfg = load_config(config, overrides, store)
    preflight(cfg)
    from flows.pipeline import pipeline_flow
    from flows.runner import with_runner

    with reporting_server(cfg):
        with_runner(pipeline_flow, cfg)(cfg)


def _restore(path: Path):
    """The discriminator and checkpoint of ``path``; CheckpointError (one line) when they do not fit."""
    from storage.checkpoints import load_discriminator
    from uniadc.discriminator import restore_discriminator

    ckpt = load_discriminator(path)
    try:
        net = restore_discriminator(
            ckpt.state, ckpt.config, ckpt.category_texts, ckpt.image_size, ckpt.seed, ckpt.backbone_sha256
        )
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return net, ckpt


def _predictor(path: Path, engine: str, resize: str = "squash") -> tuple[Callable[..., Any], list[str]]:
    """(images, threshold) -> Prediction, and the class names, for the torch or the onnx engine; the torch
    engine fits each image by ``resize`` (``dataset.resize``) and returns maps at the image's own size."""
    if engine == "onnx":
        from storage.onnx_files import read_onnx
        from uniadc.discriminator.onnx_engine import OnnxEngine

        data, meta = read_onnx(path)
        try:
            onnx_engine = OnnxEngine(data, meta)
        except (ValueError, KeyError) as exc:
            raise DataError(f"{path}: not a uniadc export ({exc})") from None
        return lambda images, threshold: onnx_engine.predict(images, threshold), onnx_engine.class_names
    from uniadc.geometry.fitted import predict_original

    net, ckpt = _restore(path)
    names = ["normal", *ckpt.category_names] + (["other"] if ckpt.config.open_set else [])
    return lambda images, threshold: predict_original(net, images[0], threshold, resize), names


@app.command("export")
@user_errors
def export_cmd(
    model: Annotated[
        str, typer.Option(help="run folder, train-* folder or model.safetensors file (local or a store URL)")
    ],
    out: Annotated[Path, typer.Option(help="the .onnx file to write")],
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="input side (default: the training size)")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
) -> None:
    """One ONNX graph: uint8 (N, S, S, 3) images -> anomaly map and class logits, with the decision metadata."""
    import torch

    from storage.onnx_files import write_onnx
    from storage.prediction_io import find_checkpoint
    from tasks.common import file_sha256
    from uniadc.discriminator.export import INPUT_NAME, OUTPUT_NAMES, InferenceGraph, export_metadata

    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out}: must end in .onnx")
    if image_size is not None and not 32 <= image_size <= 2048:
        raise ConfigError(f"--image-size: must be in [32, 2048], got {image_size}")
    if not 11 <= opset <= 20:
        raise ConfigError(f"--opset: must be in [11, 20], got {opset}")
    path = find_checkpoint(model)
    net, ckpt = _restore(path)
    graph = InferenceGraph(net, image_size)
    size = graph.image_size
    meta = export_metadata(net, ckpt.category_names, size, file_sha256(path), ckpt.versions)
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    write_onnx(graph, example, out, INPUT_NAME, OUTPUT_NAMES, meta, opset)
    console.print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): uint8 (N, {size}, {size}, 3) -> anomaly_map, "
        f"class_logits; classes {meta['class_names']}; threshold 0.5 = {meta['threshold_origin']}",
        highlight=False,
    )


@app.command("predict")
@user_errors
def predict_cmd(
    model: Annotated[
        str,
        typer.Option(
            help="run folder, train-* folder, model.safetensors (local or a store URL) or (engine onnx) model.onnx"
        ),
    ],
    images: Annotated[list[str], typer.Option(help="image file, folder or glob pattern (repeatable)")],
    out: Annotated[Path, typer.Option(help="output folder (replaced when it holds an earlier prediction)")],
    threshold: Annotated[
        float | None,
        typer.Option(help="anomaly threshold on the map (default: the checkpoint's calibrated 0.5)"),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="torch (the checkpoint) or onnx (an exported .onnx file)")
    ] = "torch",
    resize: Annotated[
        str,
        typer.Option(
            help="auto | squash | pad | tile, as the run's dataset.resize (torch engine; onnx: squash)"
        ),
    ] = "auto",
) -> None:
    """Anomaly maps, class maps and overlay PNGs (colour per class, legend) for images, folders or globs.

    Every input is decoded first; the outputs are built in a temporary folder and renamed to ``--out``, so a bad
    input writes nothing and a finished run writes everything.
    """
    import polars as pl

    from storage.files import atomic_dir
    from storage.images import read_image
    from storage.parquet import write_table_atomic
    from storage.prediction_io import (
        PREDICTIONS_FILE,
        check_output_folder,
        collect_images,
        find_checkpoint,
        output_names,
        write_prediction,
    )
    from uniadc.visualize import heatmap, overlay, with_legend

    threshold = 0.5 if threshold is None else threshold
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold: must be in (0, 1), got {threshold}")
    if engine not in ("torch", "onnx"):
        raise ConfigError(f"--engine: must be torch or onnx, got {engine!r}")
    if resize not in ("auto", "squash", "pad", "tile"):
        raise ConfigError(f"--resize: must be auto, squash, pad or tile, got {resize!r}")
    if engine == "onnx" and resize not in ("auto", "squash"):
        raise ConfigError(f"--resize {resize}: the onnx engine squashes (its graph takes one square size)")
    if engine == "onnx":
        if not model.endswith(".onnx"):
            raise ConfigError(
                f"--model {model}: the onnx engine runs an exported .onnx file "
                "(uniadc export --model RUN --out model.onnx)"
            )
        path = Path(model)
    else:
        path = find_checkpoint(model)
    files = collect_images(images)
    check_output_folder(out)
    with progress() as bar:
        job = bar.add_task(f"checking {len(files)} images", total=len(files))
        for f in files:
            read_image(f)
            bar.advance(job)
    run_model, names = _predictor(path, engine, resize)
    rows = []
    with progress() as bar, atomic_dir(out, replace=True) as tmp:
        job = bar.add_task(f"predicting {len(files)} images", total=len(files))
        for f, name in zip(files, output_names(files), strict=True):
            image = read_image(f)
            pred = run_model(image[None], threshold)
            cls = int(pred.image_classes[0])
            view = with_legend(overlay(image, pred.class_maps[0]), names, title=f"predicted: {names[cls]}")
            write_prediction(
                tmp, name, pred.anomaly_maps[0], pred.class_maps[0], heatmap(pred.anomaly_maps[0]), view
            )
            rows.append(
                {
                    "image": f.name,
                    "path": str(f),
                    "output": name,
                    "image_score": float(pred.image_scores[0]),
                    "class_index": cls,
                    "class_name": names[cls],
                }
            )
            bar.advance(job)
        write_table_atomic(pl.DataFrame(rows).to_arrow(), tmp / PREDICTIONS_FILE)
    for r in rows:
        console.print(f"{r['path']}: score {r['image_score']:.3f} -> {r['class_name']}", highlight=False)
    console.print(f"wrote {len(rows)} predictions to {out} (checkpoint {path})", highlight=False)


@store_app.command("gc")
@user_errors
def store_gc(
    store: Annotated[str, typer.Option("--store", help="the store: a folder or a URL (s3://bucket/prefix)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would go, remove nothing")] = False,
) -> None:
    """Remove stage folders, cache records, results and stale temporaries no completed run references."""
    from storage.store_gc import collect_garbage

    plan, size = collect_garbage(store, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for p in plan.paths:
        console.print(f"{verb} {p}", highlight=False)
    console.print(
        f"{verb} {len(plan.stage_dirs)} stage folders, {len(plan.cache_records)} cache records, "
        f"{len(plan.results)} results, {len(plan.partials)} temporaries ({size / 1e6:.1f} MB); "
        f"{len(plan.kept_keys)} stage keys still referenced",
        highlight=False,
    )


@server_app.command("start")
@user_errors
def server_start(
    database: Annotated[str, typer.Option("--database", help="sqlite (default) or postgres")] = "sqlite",
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="SQLAlchemy URL, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/prefect_uniadc "
            "(default: PREFECT_API_DATABASE_CONNECTION_URL, else that URL or $PREFECT_HOME/prefect.db)",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 4200,
    workers: Annotated[int, typer.Option("--workers", min=0, help="process workers to run")] = 1,
    pool: Annotated[str, typer.Option("--pool", help="process work pool")] = "local-proc",
    deploy: Annotated[bool, typer.Option("--deploy/--no-deploy", help="deploy prefect.yaml")] = True,
) -> None:
    """Start (or keep) a Prefect server, its work pool, workers and deployments; print the UI URL."""
    from flows import server

    server.start(database, database_url, host, port, workers, pool, deploy, say=_say)


@server_app.command("stop")
@user_errors
def server_stop() -> None:
    """Stop the workers and the server that ``server start`` recorded (nothing else)."""
    from flows import server

    server.stop(say=_say)


@server_app.command("status")
@user_errors
def server_status() -> None:
    """What ``server start`` recorded, and whether each process is still alive; exit 1 when not running."""
    from flows import server

    state = server.read_state()
    if state is None:
        _say(f"no server recorded under {server.state_dir()}")
        raise typer.Exit(1)
    healthy = state.server.alive() and server.api_healthy(state.api_url)
    _say(f"server {state.ui_url} ({state.database}: {state.database_url}): {'up' if healthy else 'down'}")
    for i, w in enumerate(state.workers):
        _say(f"worker uniadc-{i + 1} (pid {w.pid}, pool {state.pool}): {'up' if w.alive() else 'down'}")
    if not healthy:
        raise typer.Exit(1)


def _say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover - python -m flows.cli
    main()

"""Progress of a long stage, shown where the user looks: a Prefect progress artifact (the UI's Artifacts page and
the flow run's Artifacts tab), a ``rich`` bar in an interactive terminal, and a log line every tenth otherwise
(workers, CI, Dask processes: the line reaches the UI's logs too).

One ``StageProgress`` per stage unit; parallel units (the regenerate categories) share one live display.
Updates to the API are throttled (``every`` seconds), so a per-sample call costs nothing measurable.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from rich.console import Console
from rich.default_styles import DEFAULT_STYLES
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.theme import Theme

BAR_STYLES = ("bar.", "progress.")
_LOCK = threading.Lock()
_SHARED: dict[str, Any] = {"progress": None, "users": 0, "swapped": []}


def _console_handlers() -> list[Any]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values())]
    found: list[Any] = []
    for lg in loggers:
        for h in getattr(lg, "handlers", []):
            if isinstance(h, PrefectConsoleHandler) and h not in found:
                found.append(h)
    return found


def _acquire_bar() -> Progress | None:
    """The process's shared live bar when Prefect's console is a terminal; every Prefect console handler prints
    through the bar's console meanwhile, so log lines scroll above the bar instead of tearing it."""
    with _LOCK:
        if _SHARED["progress"] is None:
            handlers = _console_handlers()
            console: Console | None = handlers[0].console if handlers else None
            if console is None or not console.is_terminal:
                return None
            _SHARED["swapped"] = [(h, h.console) for h in handlers]
            for h in handlers:
                h.console = console
            # Prefect's console theme does not inherit rich's defaults; add the bar's styles for the bar's length
            console.push_theme(Theme({k: v for k, v in DEFAULT_STYLES.items() if k.startswith(BAR_STYLES)}))
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            bar.start()
            _SHARED["progress"] = bar
        _SHARED["users"] += 1
        return _SHARED["progress"]


def _release_bar() -> None:
    with _LOCK:
        _SHARED["users"] -= 1
        if _SHARED["users"] > 0 or _SHARED["progress"] is None:
            return
        _SHARED["progress"].stop()
        _SHARED["progress"].console.pop_theme()
        for h, console in _SHARED["swapped"]:
            h.console = console
        _SHARED.update(progress=None, swapped=[])


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (a library call): plain logging
        return logging.getLogger("uniadc")


def rate_text(done: int, elapsed: float, total: int, unit: str) -> str:
    """``12.3 it/s, ETA 40 s`` (or ``s/it`` below one per second)."""
    if done <= 0 or elapsed <= 0:
        return ""
    rate = done / elapsed
    speed = f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}"
    eta = (total - done) / rate
    return f"{speed}, ETA {eta:.0f} s" if done < total else f"{speed}, {elapsed:.0f} s"


class StageProgress:
    """``with StageProgress(key, "train", total, unit="it") as p: ... p.update(done, loss=0.4)``."""

    def __init__(self, key: str, label: str, total: int, unit: str = "", every: float = 2.0) -> None:
        self.key, self.label, self.total, self.unit, self.every = key, label, max(int(total), 1), unit, every
        self.done, self.info = 0, ""
        self._t0 = time.monotonic()
        self._last_api = 0.0
        self._last_decile = -1
        self._artifact = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._log = _logger()

    def __enter__(self) -> StageProgress:
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import FlowRunContext, TaskRunContext

            if FlowRunContext.get() or TaskRunContext.get():  # artifacts belong to a run
                self._artifact = create_progress_artifact(
                    0.0, key=self.key, description=f"{self.label}: starting"
                )
        except Exception:  # noqa: BLE001 - no API (a library call outside a flow): terminal and log only
            self._artifact = None
        self._bar = _acquire_bar()
        if self._bar is not None:
            self._task = self._bar.add_task(self.label, total=self.total, info="")
        return self

    def description(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        rate = rate_text(self.done, time.monotonic() - self._t0, self.total, self.unit or "step")
        return ", ".join(x for x in (f"{self.label}: {self.done}/{self.total}{unit}", self.info, rate) if x)

    def update(self, done: int, **info: float | str) -> None:
        self.done = min(int(done), self.total)
        self.info = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, info=self.info)
        else:
            decile = 10 * self.done // self.total
            if decile > self._last_decile:
                self._last_decile = decile
                self._log.info(self.description())
        now = time.monotonic()
        if self._artifact is not None and (now - self._last_api >= self.every or self.done == self.total):
            self._last_api = now
            self._push()

    def _push(self) -> None:
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(self._artifact, 100.0 * self.done / self.total, self.description())
        except Exception as exc:  # noqa: BLE001 - progress must never fail a stage
            self._log.debug("progress artifact update failed: %s", exc)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self.done < self.total:
            self.done = self.total
        if self._artifact is not None:
            self._push()
        if self._bar is not None and self._task is not None:
            self._bar.remove_task(self._task)
            _release_bar()
        elif exc_type is None and self._last_decile < 10:
            self._log.info(self.description())

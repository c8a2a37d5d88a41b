"""ONNX model files: traced from a module, metadata attached, written atomically; read back with metadata.

Uses the TorchScript-based exporter (``dynamo=False``): the inference graph has no data-dependent control flow
and this exporter needs only the ``onnx`` package (the torch.export-based one also needs ``onnxscript``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from storage.errors import DataError
from storage.files import atomic_file


def write_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    input_name: str,
    output_names: tuple[str, ...],
    metadata: dict[str, str],
    opset: int = 17,
) -> Path:
    """Trace ``module`` on ``example`` (dynamic first axis) into ``path`` with ``metadata`` as metadata_props."""
    import onnx

    path = Path(path)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with atomic_file(path) as tmp:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            # nn.MultiheadAttention's fused inference kernel (CLIP towers) has no ONNX symbolic
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                torch.onnx.export(
                    module,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    input_names=[input_name],
                    output_names=list(output_names),
                    dynamic_axes={input_name: {0: "n"}, **{o: {0: "n"} for o in output_names}},
                    opset_version=opset,
                    do_constant_folding=True,
                )
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return path


def read_onnx(path: str | Path) -> tuple[bytes, dict[str, str]]:
    """The file's bytes and its metadata_props; DataError naming the file when it is not an ONNX model."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such ONNX model file")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # onnx raises DecodeError and friends for arbitrary bytes
        raise DataError(f"{path}: not an ONNX model ({exc})") from None
    return data, {p.key: p.value for p in model.metadata_props}

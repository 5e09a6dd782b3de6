"""Writing a module in each export format, and running the written file to check it.

- ``"torch-export"``: a ``torch.export`` ExportedProgram saved with ``torch.export.save``
  (``.pt2``), read back with ``torch.export.load``. The maintained way to capture a PyTorch
  program; the same program lowers to ONNX, AOTInductor or ExecuTorch.
- ``"onnx"``: by default PyTorch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
  which captures with ``torch.export``; opset 18); ``exporter="legacy"`` takes the
  TorchScript-based one (opset 17), for as long as PyTorch ships it. Run with onnxruntime.
- ``"torchscript"``: ``torch.jit.trace`` or ``torch.jit.script``, deprecated upstream in favour of
  ``torch.export``; kept for runtimes that load TorchScript.

Every writer takes the module (in eval mode), a tuple of example tensors and the path, writes
the file atomically and returns a function that runs the written file on tensors and returns a
tuple of tensors. With ``dynamic_batch`` dim 0 of every input and output is dynamic, named
"batch"; every other size is the example's.
"""

import logging
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from condconv_det.file_io import atomic_write

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "ONNX_EXPORTERS",
    "ONNX_OPSETS",
    "UNCAPTURED_DETECTOR",
    "export_program",
    "onnx_runner",
    "write_onnx",
    "write_program",
    "write_torchscript",
]

FORMATS = ("torchscript", "onnx", "torch-export")
EXTENSIONS = {"torchscript": "ts", "onnx": "onnx", "torch-export": "pt2"}
ONNX_EXPORTERS = ("dynamo", "legacy")
# The dynamo exporter writes opset 18 and up; the lowest is read by the most runtimes.
ONNX_OPSETS = {"dynamo": 18, "legacy": 17}

# Why a detectron2 detector as a whole (pre-processing, network, decoding, NMS) does not go
# through torch.export, and so neither through the dynamo ONNX exporter (torch 2.14, detectron2
# 0.6 and main, SSD and RetinaNet alike; docs/export.md says where each stops).
UNCAPTURED_DETECTOR = (
    "torch.export cannot capture detectron2's inference: ImageList.from_tensors pads the "
    "images to a size it computes from tensors, and the post-processing (score threshold, "
    "top-k, NMS) makes tensors whose sizes depend on the scores; both are sizes known only "
    "from the data, which torch.export refuses to guard on"
)

Runner = Callable[..., Tuple[torch.Tensor, ...]]


def _quietly(fn: Callable, *args, **kwargs):
    # Tracing warns about every Python int taken from a shape and every assert; both are fixed
    # for a fixed input size, and the checks after export catch what would not be. The dynamo
    # exporter's graph optimisers log every initializer they merge or fold, at INFO.
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _as_tuple(outputs) -> Tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _module_runner(module: Callable) -> Runner:
    def run(*inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return _as_tuple(module(*inputs))

    return run


def _batch_shapes(inputs: Tuple[torch.Tensor, ...], dynamic_batch: bool):
    """``dynamic_shapes`` for torch.export: dim 0 of every input one dynamic size "batch"
    (at least 1), or None: all sizes static."""
    if not dynamic_batch:
        return None
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} for _ in inputs)


def export_program(
    module: nn.Module, inputs: Tuple[torch.Tensor, ...], dynamic_batch: bool = True
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``module`` on ``inputs``; with ``dynamic_batch``, dim 0 of every
    input is one dynamic size "batch" (at least 1)."""
    shapes = _batch_shapes(inputs, dynamic_batch)
    return _quietly(torch.export.export, module, inputs, dynamic_shapes=shapes)


def write_program(
    module: nn.Module, inputs: Tuple[torch.Tensor, ...], path: str, dynamic_batch: bool = True
) -> Runner:
    """Writes :func:`export_program`'s ExportedProgram to ``path`` (``torch.export.save``);
    returns a function running the program loaded back from it."""
    program = export_program(module, inputs, dynamic_batch)
    atomic_write(path, lambda f: torch.export.save(program, f))
    return _module_runner(torch.export.load(path).module())


def write_onnx(
    module: nn.Module,
    inputs: Tuple[torch.Tensor, ...],
    path: str,
    input_names: Sequence[str],
    output_names: Optional[Sequence[str]],
    exporter: str = "dynamo",
    dynamic_batch: bool = True,
) -> Runner:
    """Writes ``module`` as ONNX (opset :data:`ONNX_OPSETS` of ``exporter``); returns a function
    running the file with onnxruntime.

    Args:
        input_names, output_names: the graph's; None for the exporter's own output names.
        exporter: "dynamo" (``torch.onnx.export(..., dynamo=True)``) or "legacy" (the
            TorchScript-based exporter, a trace: Python control flow runs for the example).
    """
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"ONNX exporter must be one of {ONNX_EXPORTERS}, got {exporter!r}")
    opset = ONNX_OPSETS[exporter]
    input_names = list(input_names)
    output_names = None if output_names is None else list(output_names)
    if exporter == "dynamo":
        import onnx

        program = _quietly(
            torch.onnx.export,
            module,
            inputs,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=_batch_shapes(inputs, dynamic_batch),
            verbose=False,
        )
        atomic_write(path, lambda f: onnx.save_model(program.model_proto, f))
    else:
        dynamic_axes = None
        if dynamic_batch:
            dynamic_axes = {name: {0: "batch"} for name in input_names + (output_names or [])}
        atomic_write(
            path,
            lambda f: _quietly(
                torch.onnx.export,
                module,
                inputs,
                f,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                dynamo=False,
            ),
        )
    return onnx_runner(path)


def onnx_runner(path: str) -> Runner:
    """A function running the ONNX file at ``path`` with onnxruntime (CPU): tensors in, in the
    order of the graph's inputs; tensors out."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feeds: Dict[str, object] = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)}
        return tuple(torch.from_numpy(o) for o in session.run(None, feeds))

    return run


def write_torchscript(
    module: nn.Module, inputs: Tuple[torch.Tensor, ...], path: str, method: str = "tracing"
) -> Runner:
    """Writes ``module`` traced on ``inputs`` (``method="tracing"``) or scripted
    (``"scripting"``) as TorchScript; returns a function running the file loaded back.

    Scripting raises TorchScript's own errors for code it cannot compile.
    """
    if method == "scripting":
        compiled = _quietly(torch.jit.script, module)
    elif method == "tracing":
        compiled = _quietly(torch.jit.trace, module, inputs, check_trace=False)
    else:
        raise ValueError(f"TorchScript method must be 'tracing' or 'scripting', got {method!r}")
    atomic_write(path, lambda f: _quietly(torch.jit.save, compiled, f))
    return _module_runner(_quietly(torch.jit.load, path))

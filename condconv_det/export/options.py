"""How a detector is exported (format, TorchScript method, ONNX exporter), checked together,
and what an export with those options writes."""

import os
from dataclasses import dataclass
from typing import Dict, Optional

from .formats import EXTENSIONS, FORMATS, ONNX_EXPORTERS, ONNX_OPSETS, UNCAPTURED_DETECTOR

__all__ = ["ExportInputError", "ExportOptions"]

EXPORT_METHODS = ("tracing", "scripting")


class ExportInputError(ValueError):
    """Bad input to an export (config, weights, options, a model that does not capture); the
    message says how to fix it."""


@dataclass(frozen=True)
class ExportOptions:
    """The options of an export, as ``tools/export_model.py`` takes them; checked when made.

    Attributes:
        format: one of :data:`~condconv_det.export.formats.FORMATS`.
        export_method: "tracing" or "scripting" (``torch.jit.script``, TorchScript only).
        onnx_exporter: with the "onnx" format, "dynamo" (the default, filled in when None) or
            "legacy"; None with the other formats.

    Raises:
        ExportInputError: an unknown value, an option that does not go with the format, or a
            package the ONNX export needs that is not installed.
    """

    format: str = "torchscript"
    export_method: str = "tracing"
    onnx_exporter: Optional[str] = None

    def __post_init__(self):
        if self.format not in FORMATS:
            choices = ", ".join(repr(f) for f in FORMATS)
            raise ExportInputError(f"unknown --format {self.format!r}: choose one of {choices}")
        if self.export_method not in EXPORT_METHODS:
            raise ExportInputError(
                f"unknown --export-method {self.export_method!r}: choose 'tracing' or 'scripting'"
            )
        if self.format != "torchscript" and self.export_method != "tracing":
            raise ExportInputError(
                f"--export-method {self.export_method} is for --format torchscript; --format "
                f"{self.format} captures the model with its own tracer: use --export-method "
                "tracing (the default) or leave the option out"
            )
        if self.onnx_exporter is not None and self.format != "onnx":
            raise ExportInputError(
                f"--onnx-exporter is for --format onnx, got it with --format {self.format}: "
                "leave it out or add --format onnx"
            )
        if self.format != "onnx":
            return
        if self.onnx_exporter is None:
            object.__setattr__(self, "onnx_exporter", "dynamo")  # frozen: set once, here
        if self.onnx_exporter not in ONNX_EXPORTERS:
            raise ExportInputError(
                f"unknown --onnx-exporter {self.onnx_exporter!r}: choose 'dynamo' or 'legacy'"
            )
        packages = ("onnx", "onnxruntime")
        if self.onnx_exporter == "dynamo":
            packages += ("onnxscript",)
        for package in packages:
            try:
                __import__(package)
            except ImportError as e:
                raise ExportInputError(
                    f"--format onnx --onnx-exporter {self.onnx_exporter} needs {package} (export "
                    f"and check): pip install {package}"
                ) from e

    @property
    def extension(self) -> str:
        """The files' extension: "pt2", "onnx" or "ts"."""
        return EXTENSIONS[self.format]

    @property
    def opset(self) -> Optional[int]:
        """The ONNX opset written, None for the other formats."""
        return ONNX_OPSETS[self.onnx_exporter] if self.format == "onnx" else None

    @property
    def detector_not_exported(self) -> Optional[str]:
        """Why an export with these options writes no whole detector; None when it writes one."""
        if self.format == "torch-export" or self.onnx_exporter == "dynamo":
            return (
                f"{UNCAPTURED_DETECTOR}. Deploy network.{self.extension} with anchors.npy "
                "(decode, then NMS), or trace a one-image detector with --format onnx "
                "--onnx-exporter legacy or --format torchscript"
            )
        if self.export_method == "scripting":
            return "its post-processing does not script; export it with --export-method tracing"
        return None

    def output_files(self, output_dir: str) -> Dict[str, str]:
        """The files an export into ``output_dir`` writes, by name: "network", "detector" (when
        one is written), "anchors" and "info" (export.json)."""
        files = {"network": os.path.join(output_dir, f"network.{self.extension}")}
        if self.detector_not_exported is None:
            files["detector"] = os.path.join(output_dir, f"detector.{self.extension}")
        files["anchors"] = os.path.join(output_dir, "anchors.npy")
        files["info"] = os.path.join(output_dir, "export.json")
        return files

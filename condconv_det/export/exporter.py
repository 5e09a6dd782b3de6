"""Exporting a trained detector in the format of :class:`ExportOptions` and checking every
written file against the PyTorch model (``tools/export_model.py``): :func:`export_model` writes
the network, the whole detector where the format can capture it, the anchors and
``export.json``."""

import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torch import nn

from condconv_det.checkpoint import (
    CheckpointMismatchError,
    UnreadableCheckpointError,
    load_weights_exact,
)
from condconv_det.config import store_experts_for_inference
from condconv_det.file_io import atomic_write

from .compare import check_detector, check_network
from .detectron2_export import import_scripting_with_instances, import_tracing_adapter
from .formats import write_onnx, write_program, write_torchscript
from .network import DenseDetectorNetwork, dense_anchors, score_activation
from .options import ExportInputError, ExportOptions
from .sample import image_variants, load_sample_image

__all__ = ["build_detector", "export_detector", "export_model", "export_network"]

logger = logging.getLogger(__name__)


def build_detector(cfg) -> nn.Module:
    """The config's detector on the CPU, in eval mode, with every parameter from
    ``MODEL.WEIGHTS`` (:func:`~condconv_det.checkpoint.load_weights_exact`) and its experts
    stored in ``MODEL.CONDCONV.EXPERT_DTYPE``.

    The CPU because a trace records the device of the tensors it creates (the anchors).

    Raises:
        ExportInputError: weights that cannot be read or do not fit the config.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    # Exact: an export with randomly initialised layers must fail, not be written.
    try:
        load_weights_exact(model, cfg.MODEL.WEIGHTS)
    except (CheckpointMismatchError, UnreadableCheckpointError) as e:
        raise ExportInputError(
            f"{e}\nUse the config the checkpoint was trained with, and the same overrides."
        ) from e
    return store_experts_for_inference(model, cfg)


def _capture_error(what: str, how: str, error: Exception, fix: str) -> ExportInputError:
    """An ExportInputError: ``what`` does not ``how``, with the first lines of the capture's own
    message (where it stopped; the dynamo ONNX exporter's summary of the error, past its
    general advice) and the ``fix``."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    where = "\n".join("    " + line for line in lines[:8])
    return ExportInputError(f"{what} does not {how}:\n{where}\n{fix}")


def export_network(
    network: nn.Module,
    example: torch.Tensor,
    path: str,
    options: ExportOptions,
    what: str = "the network",
) -> Callable[[torch.Tensor], Tuple[torch.Tensor, ...]]:
    """Writes ``network`` (images in; logits and deltas out) to ``path`` with a dynamic batch.

    Args:
        network: usually a :class:`DenseDetectorNetwork`, in eval mode.
        example: (N, 3, H, W) images to capture with; N of at least 2, so that nothing
            special to a batch of one enters the graph.
        path: the file to write.
        options: format, TorchScript method, ONNX exporter.
        what: the network, as the error messages name it.

    Returns:
        a function running the written file.

    Raises:
        ExportInputError: a network that does not go through torch.export or does not script,
            with the capture's own reason and the options that would work.
    """
    names = (["images"], ["logits", "deltas"])
    if options.format == "onnx" and options.onnx_exporter == "legacy":
        return write_onnx(network, (example,), path, *names, exporter="legacy")
    if options.format in ("torch-export", "onnx"):  # both capture with torch.export
        try:
            if options.format == "onnx":
                return write_onnx(network, (example,), path, *names, exporter="dynamo")
            return write_program(network, (example,), path)
        except Exception as e:  # torch.export raises several error types
            fix = "Use --format onnx --onnx-exporter legacy or --format torchscript: they trace."
            raise _capture_error(what, "go through torch.export", e, fix) from e
    if options.export_method == "scripting":
        # Imports detectron2.export's torchscript_patch, which lets detectron2's ResNet and FPN
        # script (their stages become an nn.ModuleList on the copy that is scripted).
        import_scripting_with_instances()
    try:
        return write_torchscript(network, (example,), path, options.export_method)
    except Exception as e:  # TorchScript's frontend raises several error types
        if options.export_method != "scripting":
            raise
        fix = "Use --export-method tracing: the traced network keeps a dynamic batch dimension."
        raise _capture_error(what, "script (TorchScript cannot compile it)", e, fix) from e


def _detector_output_names(schema) -> Optional[List[str]]:
    """Names of the flattened outputs of [{"instances": Instances}]: its fields, then
    "image_size" (the order of detectron2's InstancesSchema); None for another structure."""
    try:
        instances = schema.schemas[0].schemas[0]
        if list(schema.schemas[0].keys) == ["instances"] and all(s == 1 for s in instances.sizes):
            return list(instances.keys) + ["image_size"]
    except (AttributeError, IndexError):
        pass
    return None


def export_detector(
    model: nn.Module, image: torch.Tensor, path: str, options: ExportOptions
) -> Tuple[Callable[[torch.Tensor], Instances], Optional[List[str]]]:
    """Traces the whole detector (pre-processing, network, decoding, NMS) for one image through
    detectron2's ``TracingAdapter`` and writes it to ``path``, as TorchScript or with the legacy
    ONNX exporter (``options``; the only formats that capture it).

    Args:
        model: the detector, in eval mode.
        image: (3, H, W) image to trace with.

    Returns:
        a function running the written file on one (3, H, W) image and rebuilding its
        Instances, and the names of the file's flat outputs (None if they are not the usual
        fields of one image's Instances).
    """
    # eval() on the adapter too: a new module is in training mode, and torch.onnx.export
    # restores the mode it found, recursively, which would leave the detector training.
    adapter = import_tracing_adapter()(model, [{"image": image}]).eval()
    with torch.no_grad():
        adapter(*adapter.flattened_inputs)  # sets adapter.outputs_schema
    schema = adapter.outputs_schema
    names = _detector_output_names(schema)
    inputs = tuple(adapter.flattened_inputs)
    if options.format == "onnx":
        run_file = write_onnx(
            adapter, inputs, path, ["image"], names, "legacy", dynamic_batch=False
        )
    else:
        run_file = write_torchscript(adapter, inputs, path, "tracing")

    def run(x: torch.Tensor) -> Instances:
        return schema(list(run_file(x)))[0]["instances"]

    return run, names


def export_model(
    cfg,
    output_dir: str,
    options: ExportOptions = ExportOptions(),
    *,
    sample_image: Optional[str] = None,
    batch_sizes: Sequence[int] = (1, 2, 3),
    atol: float = 1e-3,
    config_file: Optional[str] = None,
) -> Dict:
    """Exports the detector of ``cfg`` (an SSD or a RetinaNet with ``MODEL.WEIGHTS``) into
    ``output_dir``, checks every written file against PyTorch and writes ``export.json``.

    Written (each file atomically; names from :meth:`ExportOptions.output_files`): the network
    (:class:`DenseDetectorNetwork`, dynamic batch, exported at batch 2), the whole detector for
    one image where the format captures it, ``anchors.npy`` (:func:`dense_anchors`) and
    ``export.json`` (what the files take and give, and the measured differences).

    Args:
        cfg: the detector's config.
        output_dir: created if missing.
        options: format, TorchScript method, ONNX exporter.
        sample_image: the image file to trace and check with; None for a generated one
            (:func:`~condconv_det.export.sample.load_sample_image`).
        batch_sizes: where the network is checked.
        atol: the tolerance of :func:`~condconv_det.export.check_close`.
        config_file: the config's file, recorded in export.json and named in messages.

    Returns:
        what export.json holds.

    Raises:
        ExportInputError: weights that do not fit, a detector that is not an SSD or a
            RetinaNet, a network that does not capture in this format.
        ExportCheckError: a written file that does not compute what PyTorch computes.
    """
    model = build_detector(cfg)
    try:
        network = DenseDetectorNetwork(model).eval()
    except TypeError as e:  # an R-CNN config: the message says what is supported
        raise ExportInputError(str(e)) from e
    image = load_sample_image(cfg, sample_image)
    os.makedirs(output_dir, exist_ok=True)
    paths = options.output_files(output_dir)
    files = {"network": paths["network"]}

    start = time.perf_counter()
    what = "the network" if config_file is None else f"the network of {config_file}"
    # Exported at batch 2, so that nothing special to a batch of one can enter the graph.
    run_network = export_network(network, image_variants(image, 2), files["network"], options, what)
    logger.info("wrote %s (%.1f s)", files["network"], time.perf_counter() - start)
    network_diffs = check_network(network, run_network, image, batch_sizes, atol)

    detector_diffs, detector_outputs = None, None
    if "detector" in paths:
        files["detector"] = paths["detector"]
        start = time.perf_counter()
        run_detector, detector_outputs = export_detector(model, image, files["detector"], options)
        logger.info("wrote %s (%.1f s)", files["detector"], time.perf_counter() - start)
        detector_diffs = check_detector(model, run_detector, image, atol)

    files["anchors"] = paths["anchors"]
    anchors = dense_anchors(model, image[None])
    atomic_write(files["anchors"], lambda f: np.save(f, anchors.numpy()))

    height, width = image.shape[-2:]
    info = {
        "config_file": config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "format": options.format,
        "export_method": options.export_method if options.format == "torchscript" else None,
        "onnx_exporter": options.onnx_exporter,
        "opset": options.opset,
        "files": {k: {"path": v, "bytes": os.path.getsize(v)} for k, v in files.items()},
        "input": {
            "channels": cfg.INPUT.FORMAT,
            "height": int(height),
            "width": int(width),
            "dtype": "float32",
            "range": "0-255, resized as at test time, not normalised",
        },
        "network": {
            "input": "images (N, 3, H, W), N dynamic",
            "outputs": [
                f"logits (N, {anchors.shape[0]}, {network.num_score_channels})",
                f"deltas (N, {anchors.shape[0]}, 4)",
            ],
            "score_activation": score_activation(model),
            "num_classes": int(model.num_classes),
            "box2box_weights": list(model.box2box_transform.weights),
            "batch": "dynamic",
            "max_abs_diff": network_diffs,
        },
        "detector": None
        if detector_diffs is None
        else {
            "input": "image (3, H, W)",
            "outputs": detector_outputs,
            "batch": "one image per call",
            "max_abs_diff": detector_diffs,
        },
        "detector_not_exported": options.detector_not_exported,
        "atol": atol,
    }
    atomic_write(paths["info"], lambda f: json.dump(info, f, indent=2), "w")
    return info

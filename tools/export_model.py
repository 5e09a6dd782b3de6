#!/usr/bin/env python
"""Export a trained condconv_det detector (SSD or RetinaNet) with torch.export, to ONNX or to
TorchScript, then check the exported files against the PyTorch model on the same inputs.

    python tools/export_model.py --config-file configs/shapes/ssd_condconv_MNv1.yaml \\
        --format torch-export --output output/export \\
        MODEL.WEIGHTS output/ssd_condconv/model_final.pth

Formats (--format):

- ``torch-export``: a ``torch.export`` ExportedProgram (``torch.export.save``, ``.pt2``; load it
  with ``torch.export.load(path).module()``). The network only (see below for why).
- ``onnx``: PyTorch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, opset 18), which
  captures with torch.export: the network only. ``--onnx-exporter legacy`` takes the
  TorchScript-based exporter (opset 17) instead, for as long as PyTorch ships it: network and
  detector.
- ``torchscript`` (the default): ``torch.jit.trace`` (network and detector) or, with
  ``--export-method scripting``, ``torch.jit.script`` (network). TorchScript is deprecated
  upstream in favour of torch.export; kept for runtimes that load it.

Written to --output (``EXT`` is ``pt2``, ``onnx`` or ``ts``):

- ``network.EXT``: normalisation, backbone and head. Input "images" (N, 3, H, W) float32,
  pixel values 0-255 in ``INPUT.FORMAT`` order, resized as at test time; outputs "logits"
  (N, R, C) and "deltas" (N, R, 4) for the R anchors of ``anchors.npy``. The batch N is dynamic
  (checked at every --batch-sizes); H and W are those of the export.
- ``detector.EXT`` (TorchScript trace, legacy ONNX): the whole detector with decoding and NMS,
  traced with detectron2's ``TracingAdapter``. Input "image" (3, H, W); outputs pred_boxes
  (D, 4) XYXY in the input's pixels, pred_classes (D,), scores (D,), image_size (2,). One image
  per call: the detector's post-processing loops over the images in Python, which a trace
  unrolls for the traced batch. torch.export (and so the dynamo ONNX exporter) cannot capture
  the whole detector: detectron2's pre-processing pads to sizes computed from tensors and its
  post-processing makes tensors of data-dependent sizes; the tool says so and writes the
  network alone.
- ``anchors.npy``: (R, 4) float32 anchors / default boxes, XYXY in the input's pixels.
- ``export.json``: what the files take and give, and the measured differences to PyTorch.

Each file is written atomically. An --output whose files would replace the config, the weights
or --sample-image is refused before anything is built.

--export-method scripting (TorchScript only) scripts the network: the MobileNet, ResNet and SSD
backbones of this project script (ResNet through detectron2's own scripting patch); a network
that does not script is refused with the line TorchScript rejects.

Config overrides go at the end as KEY VALUE pairs, like detectron2's tools.
"""

import _tool_env  # noqa: F401  (first: process settings made before torch is imported)

import argparse
import json
import logging
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances

import condconv_det  # noqa: F401  (registers the backbones and SSD)
from condconv_det.analysis import eval_image_size
from condconv_det.checkpoint import (
    CheckpointMismatchError,
    CondConvCheckpointer,
    UnreadableCheckpointError,
)
from condconv_det.config import load_config
from condconv_det.data import build_test_augmentation, read_image
from condconv_det.export import (
    DenseDetectorNetwork,
    ExportCheckError,
    check_close,
    compare_detections,
    dense_anchors,
    import_scripting_with_instances,
    import_tracing_adapter,
    score_activation,
)
from condconv_det.export.formats import (
    EXTENSIONS,
    FORMATS,
    ONNX_EXPORTERS,
    ONNX_OPSETS,
    UNCAPTURED_DETECTOR,
    write_onnx,
    write_program,
    write_torchscript,
)
from condconv_det.file_io import atomic_write, check_outputs_spare_inputs

logger = logging.getLogger("condconv_det.export_model")


class ExportInputError(ValueError):
    """Bad input to the tool (config, weights, options); the message says how to fix it."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="the detector's YAML config")
    parser.add_argument(
        "--format",
        default="torchscript",
        help="torch-export (ExportedProgram, .pt2), onnx, or torchscript (the default; "
        "deprecated upstream in favour of torch.export)",
    )
    parser.add_argument(
        "--onnx-exporter",
        default=None,
        help="with --format onnx: dynamo (the default; torch.onnx.export(..., dynamo=True), "
        "network only) or legacy (the TorchScript-based exporter, network and detector)",
    )
    parser.add_argument(
        "--export-method", default="tracing", help="tracing (default) or scripting (TorchScript)"
    )
    parser.add_argument("--output", default="output/export", help="directory for the files")
    parser.add_argument(
        "--sample-image",
        default=None,
        help="image to trace and check with (default: a generated one of the test input size)",
    )
    parser.add_argument(
        "--batch-sizes", default="1,2,3", help="batch sizes the network is checked at"
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=1e-3,
        help="largest max-abs difference to PyTorch accepted, relative to an output's largest "
        "magnitude when above 1 (default 1e-3)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> List[int]:
    """Validates the options that argparse cannot; returns the batch sizes."""
    if args.format not in FORMATS:
        choices = ", ".join(repr(f) for f in FORMATS)
        raise ExportInputError(f"unknown --format {args.format!r}: choose one of {choices}")
    if args.export_method not in ("tracing", "scripting"):
        raise ExportInputError(
            f"unknown --export-method {args.export_method!r}: choose 'tracing' or 'scripting'"
        )
    if args.format != "torchscript" and args.export_method != "tracing":
        raise ExportInputError(
            f"--export-method {args.export_method} is for --format torchscript; --format "
            f"{args.format} captures the model with its own tracer: use --export-method tracing "
            "(the default) or leave the option out"
        )
    if args.onnx_exporter is not None and args.format != "onnx":
        raise ExportInputError(
            f"--onnx-exporter is for --format onnx, got it with --format {args.format}: "
            "leave it out or add --format onnx"
        )
    if args.format == "onnx" and args.onnx_exporter is None:
        args.onnx_exporter = "dynamo"
    if args.format == "onnx" and args.onnx_exporter not in ONNX_EXPORTERS:
        raise ExportInputError(
            f"unknown --onnx-exporter {args.onnx_exporter!r}: choose 'dynamo' or 'legacy'"
        )
    if args.format == "onnx":
        packages = ("onnx", "onnxruntime")
        if args.onnx_exporter == "dynamo":
            packages += ("onnxscript",)
        for package in packages:
            try:
                __import__(package)
            except ImportError as e:
                raise ExportInputError(
                    f"--format onnx --onnx-exporter {args.onnx_exporter} needs {package} (export "
                    f"and check): pip install {package}"
                ) from e
    if not os.path.isfile(args.config_file):
        raise ExportInputError(f"config file {args.config_file!r} does not exist")
    if args.sample_image is not None and not os.path.isfile(args.sample_image):
        raise ExportInputError(f"--sample-image {args.sample_image!r} does not exist")
    try:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ExportInputError(
            f"--batch-sizes takes positive ints, e.g. 1,2,3; got {args.batch_sizes!r}"
        )
    if not args.atol > 0:
        raise ExportInputError(f"--atol must be positive, got {args.atol}")
    return sizes


def setup_cfg(args: argparse.Namespace):
    try:
        cfg = load_config(args.config_file, args.opts)
    except (FileNotFoundError, ValueError) as e:
        raise ExportInputError(str(e)) from e
    # Exported on the CPU: a trace records the device of the tensors it creates (anchors).
    cfg.MODEL.DEVICE = "cpu"
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise ExportInputError(
            "MODEL.WEIGHTS is empty: give the trained checkpoint to export, e.g. "
            "MODEL.WEIGHTS output/model_final.pth at the end of the command"
        )
    if "://" not in weights and not os.path.isfile(os.path.expanduser(weights)):
        raise ExportInputError(
            f"MODEL.WEIGHTS {weights!r} does not exist: give the trained checkpoint (.pth of "
            "tools/train_net.py, e.g. OUTPUT_DIR/model_final.pth)"
        )
    cfg.freeze()
    return cfg


def build_detector(cfg) -> torch.nn.Module:
    """The config's detector, in eval mode, with every parameter from MODEL.WEIGHTS."""
    model = build_model(cfg).eval()
    # Strict: an export with randomly initialised layers must fail, not be written.
    try:
        CondConvCheckpointer(model, match="strict").load(cfg.MODEL.WEIGHTS, checkpointables=[])
    except (CheckpointMismatchError, UnreadableCheckpointError) as e:
        raise ExportInputError(
            f"{e}\nUse the config the checkpoint was trained with, and the same overrides."
        ) from e
    return model


def generated_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (height, width, 3) uint8 image with structure at several scales (a colour gradient,
    rectangles, discs), so that routing, scores and boxes vary as on a real image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    start, end = rng.uniform(40, 215, size=(2, 3))
    t = (x / max(width - 1, 1) + y / max(height - 1, 1))[..., None] / 2
    image = start * (1 - t) + end * t
    for _ in range(6):
        colour = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.08, 0.25) * min(height, width)
        if rng.random() < 0.5:
            mask = (np.abs(y - cy) < r) & (np.abs(x - cx) < r * rng.uniform(0.5, 1.5))
        else:
            mask = (y - cy) ** 2 + (x - cx) ** 2 < r**2
        image[mask] = colour
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def load_sample_image(cfg, path: Optional[str]) -> torch.Tensor:
    """The sample image as the detector takes it: (3, H, W) float32, 0-255, resized."""
    if path is None:
        image = generated_image(*eval_image_size(cfg))
    else:
        image = read_image(path, cfg.INPUT.FORMAT)
    image = T.AugInput(image)
    T.AugmentationList(build_test_augmentation(cfg))(image)
    return torch.as_tensor(np.ascontiguousarray(image.image.transpose(2, 0, 1))).float()


def image_variants(image: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` different images made from one, (count, 3, H, W): a batch whose examples route
    differently, so that mixing up examples in the exported model cannot go unnoticed."""
    generator = torch.Generator().manual_seed(0)
    variants = [image, image.flip(-1), (image * 0.7 + 40).clamp(0, 255)]
    while len(variants) < count:
        noise = torch.randn(image.shape, generator=generator) * 20
        variants.append((image + noise).clamp(0, 255))
    return torch.stack(variants[:count])


def capture_error(what: str, how: str, error: Exception, fix: str) -> ExportInputError:
    """An ExportInputError: ``what`` does not ``how``, with the first lines of the capture's own
    message (where it stopped; the dynamo ONNX exporter's summary of the error, past its
    general advice) and the ``fix``."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    where = "\n".join("    " + line for line in lines[:8])
    return ExportInputError(f"{what} does not {how}:\n{where}\n{fix}")


def export_network(
    network: DenseDetectorNetwork, example: torch.Tensor, args: argparse.Namespace, path: str
) -> Callable[[torch.Tensor], Tuple[torch.Tensor, ...]]:
    """Writes the network to ``path``; returns a function running the written file."""
    what = f"the network of {args.config_file}"
    names = (["images"], ["logits", "deltas"])
    if args.format == "onnx" and args.onnx_exporter == "legacy":
        return write_onnx(network, (example,), path, *names, exporter="legacy")
    if args.format in ("torch-export", "onnx"):  # both capture with torch.export
        try:
            if args.format == "onnx":
                return write_onnx(network, (example,), path, *names, exporter="dynamo")
            return write_program(network, (example,), path)
        except Exception as e:  # torch.export raises several error types
            fix = "Use --format onnx --onnx-exporter legacy or --format torchscript: they trace."
            raise capture_error(what, "go through torch.export", e, fix) from e
    if args.export_method == "scripting":
        # Imports detectron2.export's torchscript_patch, which lets detectron2's ResNet and FPN
        # script (their stages become an nn.ModuleList on the copy that is scripted).
        import_scripting_with_instances()
    try:
        return write_torchscript(network, (example,), path, args.export_method)
    except Exception as e:  # TorchScript's frontend raises several error types
        if args.export_method != "scripting":
            raise
        fix = "Use --export-method tracing: the traced network keeps a dynamic batch dimension."
        raise capture_error(what, "script (TorchScript cannot compile it)", e, fix) from e


def detector_not_exported(args: argparse.Namespace) -> Optional[str]:
    """Why the run writes no whole detector, or None when it writes one."""
    if args.format == "torch-export" or args.onnx_exporter == "dynamo":
        return (
            f"{UNCAPTURED_DETECTOR}. Deploy network.{EXTENSIONS[args.format]} with anchors.npy "
            "(decode, then NMS), or trace a one-image detector with --format onnx "
            "--onnx-exporter legacy or --format torchscript"
        )
    if args.export_method == "scripting":
        return "its post-processing does not script; export it with --export-method tracing"
    return None


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
    model: torch.nn.Module, image: torch.Tensor, args: argparse.Namespace, path: str
) -> Tuple[Callable[[torch.Tensor], Instances], Optional[List[str]]]:
    """Traces the whole detector for one image and writes it to ``path``; returns a function
    running the written file and rebuilding its Instances, and the output names."""
    # eval() on the adapter too: a new module is in training mode, and torch.onnx.export
    # restores the mode it found, recursively, which would leave the detector training.
    adapter = import_tracing_adapter()(model, [{"image": image}]).eval()
    with torch.no_grad():
        adapter(*adapter.flattened_inputs)  # sets adapter.outputs_schema
    schema = adapter.outputs_schema
    names = _detector_output_names(schema)
    inputs = tuple(adapter.flattened_inputs)
    if args.format == "onnx":
        run_file = write_onnx(
            adapter, inputs, path, ["image"], names, "legacy", dynamic_batch=False
        )
    else:
        run_file = write_torchscript(adapter, inputs, path, "tracing")

    def run(x: torch.Tensor) -> Instances:
        return schema(list(run_file(x)))[0]["instances"]

    return run, names


def check_network(
    network: DenseDetectorNetwork,
    run: Callable,
    image: torch.Tensor,
    batch_sizes: Sequence[int],
    atol: float,
) -> Dict[str, Dict[str, float]]:
    """The exported network vs PyTorch at each batch size; max abs differences per output."""
    results = {}
    for batch in batch_sizes:
        images = image_variants(image, batch)
        with torch.no_grad():
            reference = network(images)
        exported = run(images)
        results[str(batch)] = {
            name: check_close(f"network {name}, batch {batch}", ref, out, atol)
            for name, ref, out in zip(("logits", "deltas"), reference, exported)
        }
        logger.info("network, batch %d: %s", batch, results[str(batch)])
    return results


def check_detector(
    model: torch.nn.Module, run: Callable, image: torch.Tensor, atol: float
) -> List[Dict[str, float]]:
    """The exported detector vs PyTorch on a few images; differences per image."""
    results = []
    for index, variant in enumerate(image_variants(image, 3)):
        with torch.no_grad():
            reference = model([{"image": variant}])[0]["instances"]
        try:
            results.append(compare_detections(reference, run(variant), atol))
        except ExportCheckError as e:
            raise ExportCheckError(f"detector, image {index}: {e}") from e
        logger.info("detector, image %d: %s", index, results[-1])
    return results


def output_files(args: argparse.Namespace) -> Dict[str, str]:
    """The files the export writes, by name: network, detector (when traced), anchors, info."""
    ext = EXTENSIONS[args.format]
    files = {"network": os.path.join(args.output, f"network.{ext}")}
    if detector_not_exported(args) is None:
        files["detector"] = os.path.join(args.output, f"detector.{ext}")
    files["anchors"] = os.path.join(args.output, "anchors.npy")
    files["info"] = os.path.join(args.output, "export.json")
    return files


def check_outputs(args: argparse.Namespace, cfg) -> None:
    """Refuses an --output whose files would replace the config, the weights or the sample."""
    inputs = [("--config-file", args.config_file), ("--sample-image", args.sample_image)]
    inputs.append(("MODEL.WEIGHTS", os.path.expanduser(cfg.MODEL.WEIGHTS)))
    outputs = [args.output, *output_files(args).values()]
    try:
        check_outputs_spare_inputs(inputs, outputs, option="--output")
    except ValueError as e:
        raise ExportInputError(str(e)) from e


def export(args: argparse.Namespace) -> Dict:
    """Exports and checks; returns what export.json holds."""
    batch_sizes = check_args(args)
    cfg = setup_cfg(args)
    check_outputs(args, cfg)
    model = build_detector(cfg)
    try:
        network = DenseDetectorNetwork(model).eval()
    except TypeError as e:  # an R-CNN config: the message says what is supported
        raise ExportInputError(str(e)) from e
    image = load_sample_image(cfg, args.sample_image)
    os.makedirs(args.output, exist_ok=True)
    paths = output_files(args)
    files = {"network": paths["network"]}

    start = time.perf_counter()
    # Traced at batch 2, so that nothing special to a batch of one can enter the graph.
    run_network = export_network(network, image_variants(image, 2), args, files["network"])
    logger.info("wrote %s (%.1f s)", files["network"], time.perf_counter() - start)
    network_diffs = check_network(network, run_network, image, batch_sizes, args.atol)

    detector_diffs, detector_outputs = None, None
    if "detector" in paths:
        files["detector"] = paths["detector"]
        start = time.perf_counter()
        run_detector, detector_outputs = export_detector(model, image, args, files["detector"])
        logger.info("wrote %s (%.1f s)", files["detector"], time.perf_counter() - start)
        detector_diffs = check_detector(model, run_detector, image, args.atol)

    files["anchors"] = paths["anchors"]
    anchors = dense_anchors(model, image[None])
    atomic_write(files["anchors"], lambda f: np.save(f, anchors.numpy()))

    height, width = image.shape[-2:]
    info = {
        "config_file": args.config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "format": args.format,
        "export_method": args.export_method if args.format == "torchscript" else None,
        "onnx_exporter": args.onnx_exporter,
        "opset": ONNX_OPSETS[args.onnx_exporter] if args.format == "onnx" else None,
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
        "detector_not_exported": detector_not_exported(args),
        "atol": args.atol,
    }
    atomic_write(paths["info"], lambda f: json.dump(info, f, indent=2), "w")
    return info


def print_summary(info: Dict) -> None:
    how = info["onnx_exporter"] or info["export_method"]
    print(f"Exported {info['config_file']} ({info['format']}{f', {how}' if how else ''}):")
    for name, f in info["files"].items():
        print(f"  {f['path']}  {f['bytes'] / 2**20:.1f} MiB")
    net = info["network"]
    for batch, diffs in net["max_abs_diff"].items():
        text = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
        print(f"  network, batch {batch}: max abs diff to PyTorch {text}")
    if info["detector"] is None:
        print(f"  detector: not exported: {info['detector_not_exported']}")
    else:
        for index, d in enumerate(info["detector"]["max_abs_diff"]):
            print(
                f"  detector, image {index}: {d['detections']} detections, max abs diff to "
                f"PyTorch: scores {d['scores']:.2e}, boxes {d['boxes']:.2e} px"
            )
    print(f"  all within the tolerance (--atol {info['atol']:g}, relative above magnitude 1)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    try:
        info = export(args)
    except ExportInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportCheckError as e:
        print(f"error: the exported model does not match PyTorch: {e}", file=sys.stderr)
        return 1
    print_summary(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())

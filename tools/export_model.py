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
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import condconv_det  # noqa: F401  (registers the backbones and SSD)
from condconv_det.config import load_config
from condconv_det.export import ExportCheckError, ExportInputError, ExportOptions, export_model
from condconv_det.file_io import check_outputs_spare_inputs


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
    """Validates the options; returns the batch sizes. ``args.options`` gets the
    :class:`ExportOptions` of --format, --export-method and --onnx-exporter."""
    args.options = ExportOptions(args.format, args.export_method, args.onnx_exporter)
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


def check_outputs(args: argparse.Namespace, cfg) -> None:
    """Refuses an --output whose files would replace the config, the weights or the sample."""
    inputs = [("--config-file", args.config_file), ("--sample-image", args.sample_image)]
    inputs.append(("MODEL.WEIGHTS", os.path.expanduser(cfg.MODEL.WEIGHTS)))
    outputs = [args.output, *args.options.output_files(args.output).values()]
    try:
        check_outputs_spare_inputs(inputs, outputs, option="--output")
    except ValueError as e:
        raise ExportInputError(str(e)) from e


def export(args: argparse.Namespace) -> Dict:
    """Exports and checks; returns what export.json holds."""
    batch_sizes = check_args(args)
    cfg = setup_cfg(args)
    check_outputs(args, cfg)
    return export_model(
        cfg,
        args.output,
        args.options,
        sample_image=args.sample_image,
        batch_sizes=batch_sizes,
        atol=args.atol,
        config_file=args.config_file,
    )


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

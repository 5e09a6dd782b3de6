#!/usr/bin/env python
"""Run a condconv_det detector on images and save them with its predictions drawn.

    python tools/demo.py --config-file configs/shapes/ssd_condconv_MNv1.yaml \\
        --input photo.jpg images/ 'more/*.png' --output demo_out/ \\
        MODEL.WEIGHTS output/model_final.pth

``--input`` takes image files, directories (their image files, not recursive) and glob patterns
(``**`` recurses). Each input image is written to ``--output`` under its own file name, at its
own size, with the detections scoring above ``--confidence-threshold`` drawn by detectron2's
``Visualizer`` and named with the classes of ``DATASETS.TEST[0]``, or of the dataset given by
``DATASETS.COCO_JSON.*`` (the training command's keys, docs/own_data.md). Config overrides go at
the end as KEY VALUE pairs, like detectron2's tools.

The image goes through the evaluation data loader's test-time transforms (SSD: the fixed
``INPUT.SSD.SIZE`` square; other detectors: ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), so
the demo's predictions are exactly those that ``tools/train_net.py --eval-only`` scores.

``--output`` may not be an input folder, nor a folder where a drawn image would replace an input
image (paths compared after resolving links): the demo refuses before it reads anything. Each
drawn image is written atomically, so an interrupted run leaves no truncated file.

Images are read as the data loaders read them (:func:`condconv_det.data.read_image`): 16-bit
and float files are scaled to 0..255. An image that cannot be read is logged with its file name
and skipped; the exit status is 1 if any image failed.
"""

import _tool_env  # noqa: F401  (first: process settings made before torch is imported)

import argparse
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import condconv_det  # noqa: F401  (registers backbones, SSD and the bundled datasets)
from condconv_det.config import load_config, run_on_cpu_without_cuda
from condconv_det.data import IMAGE_EXTENSIONS, expand_image_inputs, image_output_names
from condconv_det.engine.coco_json_config import apply_coco_json_for_inference
from condconv_det.engine.predictor import Predictor, lower_score_thresholds
from condconv_det.engine.trainer import check_weights
from condconv_det.file_io import check_outputs_spare_inputs
from condconv_det.visualization import draw_image_file

logger = logging.getLogger("condconv_det.demo")


# A config key such as MODEL.WEIGHTS: where --input's list ends and the overrides begin.
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def split_overrides(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Splits ``--input``'s values at the first config key that is not a path on disk.

    ``--input`` takes any number of values, so argparse hands it the overrides that follow it
    (``--input a.jpg MODEL.WEIGHTS m.pth``) as inputs too.

    Returns:
        ``(inputs, overrides)``.
    """
    for i, item in enumerate(inputs):
        if CONFIG_KEY.fullmatch(item) and not os.path.exists(item):
            return list(inputs[:i]), list(inputs[i:])
    return list(inputs), []


def setup_cfg(args: argparse.Namespace):
    """The config of ``args`` (file + overrides + threshold), frozen."""
    cfg = load_config(args.config_file, args.opts)
    for change in apply_coco_json_for_inference(cfg, args.config_file, args.opts):
        logger.info(change)
    lower_score_thresholds(cfg, args.confidence_threshold)
    if run_on_cpu_without_cuda(cfg):
        logger.warning(
            "MODEL.DEVICE is cuda but CUDA is not available: running on the CPU instead."
        )
    cfg.freeze()
    return cfg


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Draw a condconv_det detector's predictions on images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python tools/demo.py --config-file configs/shapes/ssd_condconv_MNv1.yaml "
        "--input img.jpg images/ --output demo_out/ MODEL.WEIGHTS output/model_final.pth",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image files, directories of images, or glob patterns (quote them)",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="folder for the drawn images (created if missing); one image per input, same name",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="draw detections scoring above this (default 0.5)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS path/to/model_final.pth",
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> List[str]:
    """Validates ``args`` (``parser.error``, exit status 2, on bad ones); returns the images."""
    if not args.output:
        parser.error(
            "--output DIR is required: the demo writes one drawn image per input into that "
            "folder (created if missing), e.g. --output demo_out/"
        )
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output!r} is a file; give a folder for the drawn images")
    if not os.path.isfile(args.config_file):
        parser.error(f"config file {args.config_file!r} does not exist")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}")
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    files, missing, empty = expand_image_inputs(args.input)
    if missing:
        parser.error(
            f"--input {missing} do(es) not exist: give image files, directories or glob patterns"
        )
    for item in empty:
        logger.warning(f"--input {item!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    if not files:
        parser.error(
            f"no images found in --input {args.input}: expected image files, or directories or "
            f"glob patterns holding files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    inputs = [("--input", path) for path in args.input if os.path.isdir(path)]
    inputs += [("--input", path) for path in files]
    outputs = [args.output] + [
        os.path.join(args.output, name) for name in image_output_names(files)
    ]
    try:
        check_outputs_spare_inputs(inputs, outputs, option="--output")
    except ValueError as e:
        parser.error(str(e))
    return files


def run(cfg, files: Sequence[str], output_dir: str, threshold: float) -> Dict[str, str]:
    """Predicts and draws every file into ``output_dir``.

    Args:
        cfg: the frozen config.
        files: image paths.
        output_dir: created if missing.
        threshold: detections scoring above it are drawn.

    Returns:
        ``{path: error message}`` of the images that failed.
    """
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: the model has random weights.")
    check_weights(cfg.MODEL.WEIGHTS, required=False)
    predictor = Predictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
    os.makedirs(output_dir, exist_ok=True)
    failed: Dict[str, str] = {}
    with logging_redirect_tqdm():
        for path, name in zip(tqdm(files, desc="demo", unit="image"), image_output_names(files)):
            out_path = os.path.join(output_dir, name)
            try:
                instances = draw_image_file(predictor, path, out_path, threshold, metadata)
            except (OSError, ValueError) as e:  # a bad file or an unwritable output: go on
                failed[path] = str(e) if path in str(e) else f"{path}: {e}"
                logger.error(failed[path])
                continue
            logger.info(f"{path}: {len(instances)} detections above {threshold} -> {out_path}")
    return failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the demo; returns the exit status: 0 if every image was drawn, else 1."""
    parser = get_parser()
    args = parser.parse_args(argv)
    args.input, overrides = split_overrides(args.input)
    args.opts = overrides + args.opts
    setup_logger(name="condconv_det")
    setup_logger(name="fvcore")
    logger.info(f"Arguments: {args}")
    files = check_args(parser, args)
    cfg = setup_cfg(args)
    failed = run(cfg, files, args.output, args.confidence_threshold)
    done = len(files) - len(failed)
    logger.info(f"{done} of {len(files)} images drawn into {args.output}, {len(failed)} failed.")
    if failed:
        logger.error("Failed images:\n" + "\n".join(f"  {m}" for m in failed.values()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import glob
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import condconv_det  # noqa: F401  (registers backbones, SSD and the bundled datasets)
from condconv_det.checkpoint import CondConvCheckpointer
from condconv_det.config import load_config, run_on_cpu_without_cuda
from condconv_det.data import build_test_augmentation, read_image
from condconv_det.engine.coco_json_config import apply_coco_json_for_inference
from condconv_det.engine.trainer import check_weights
from condconv_det.file_io import atomic_write, check_outputs_spare_inputs

logger = logging.getLogger("condconv_det.demo")

# What a directory or a glob pattern contributes; a file named explicitly is tried whatever its
# extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# The score-threshold keys of the meta-architectures this project builds (SSD, RetinaNet, R-CNN).
SCORE_THRESH_KEYS = (
    ("SSD", "SCORE_THRESH_TEST"),
    ("RETINANET", "SCORE_THRESH_TEST"),
    ("ROI_HEADS", "SCORE_THRESH_TEST"),
)


class Predictor:
    """One image in, the model's detections out, preprocessed as in evaluation.

    Like detectron2's ``DefaultPredictor``, but with the transforms of the project's test data
    loader (:func:`build_test_augmentation`), the image as the mappers give it (uint8), and
    ``CondConvCheckpointer`` (so ``MODEL.WEIGHTS`` may also be a static checkpoint to upcycle).

    Args:
        cfg: a condconv_det config; ``MODEL.WEIGHTS`` "" keeps the random initialization.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()  # build_model may modify it
        self.model = build_model(self.cfg)
        self.model.eval()
        CondConvCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.augmentations = T.AugmentationList(build_test_augmentation(cfg))

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Instances:
        """
        Args:
            image: ``(H, W, C)`` uint8, in ``cfg.INPUT.FORMAT`` (as
                :func:`condconv_det.data.read_image` returns it).

        Returns:
            Instances of image size ``(H, W)``: ``pred_boxes`` (XYXY, in the image's pixels),
            ``scores`` and ``pred_classes``, on the CPU.
        """
        height, width = image.shape[:2]
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        inputs = {"image": tensor, "height": height, "width": width}
        return self.model([inputs])[0]["instances"].to("cpu")


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


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[str], List[str]]:
    """Image files named by ``inputs``, in argument order, each directory's and pattern's
    matches sorted, duplicates dropped.

    Args:
        inputs: file paths, directories and glob patterns.

    Returns:
        ``(files, missing, empty)``: the image files; the inputs that are neither a file, a
        directory nor a glob pattern (typos); the directories and patterns without images.
    """
    files: List[str] = []
    missing: List[str] = []
    empty: List[str] = []
    for item in inputs:
        if os.path.isfile(item):
            found = [item]
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item))
            found = [p for p in found if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
        elif glob.has_magic(item):
            found = sorted(glob.glob(item, recursive=True))
            found = [p for p in found if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            missing.append(item)
            continue
        if not found:
            empty.append(item)
        files.extend(found)
    return list(dict.fromkeys(files)), missing, empty


def output_names(files: Sequence[str]) -> List[str]:
    """One output file name per input: its base name, made unique with ``-2``, ``-3``, ... when
    inputs from different folders share one; a file without an image extension gets ``.png``
    (PIL picks the format from the extension)."""
    names: List[str] = []
    taken = set()
    for path in files:
        stem, ext = os.path.splitext(os.path.basename(path))
        if ext.lower() not in IMAGE_EXTENSIONS:
            stem, ext = stem + ext, ".png"
        name, k = stem + ext, 1
        while name in taken:
            k += 1
            name = f"{stem}-{k}{ext}"
        taken.add(name)
        names.append(name)
    return names


def lower_score_thresholds(cfg, threshold: float) -> None:
    """Lowers the model's test score thresholds to ``threshold`` where they are higher, so that
    ``--confidence-threshold`` below a config's threshold shows the extra detections. Above it,
    the model keeps the config's threshold and the demo filters: the boxes drawn are then the
    evaluation's detections that score above the threshold."""
    for node, key in SCORE_THRESH_KEYS:
        sub = cfg.MODEL.get(node, None)
        if sub is not None and key in sub and sub[key] > threshold:
            sub[key] = threshold


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
    files, missing, empty = expand_inputs(args.input)
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
    outputs = [args.output] + [os.path.join(args.output, name) for name in output_names(files)]
    try:
        check_outputs_spare_inputs(inputs, outputs, option="--output")
    except ValueError as e:
        parser.error(str(e))
    return files


def draw(image_rgb: np.ndarray, instances: Instances, metadata) -> np.ndarray:
    """``instances`` drawn on ``image_rgb`` (``(H, W, 3)`` uint8) by detectron2's
    ``Visualizer``; returns an ``(H, W, 3)`` uint8 RGB image."""
    # Imported here: the Visualizer needs OpenCV, which nothing else in the project does.
    try:
        from detectron2.utils.visualizer import Visualizer
    except ImportError as e:
        raise ImportError(
            f"detectron2's Visualizer needs OpenCV ({e}): pip install opencv-python-headless "
            "-c tools/env/constraints.txt"
        ) from e
    return (
        Visualizer(image_rgb, metadata, scale=1.0).draw_instance_predictions(instances).get_image()
    )


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
        for path, name in zip(tqdm(files, desc="demo", unit="image"), output_names(files)):
            try:
                image = read_image(path, cfg.INPUT.FORMAT)
                instances = predictor(image)
                instances = instances[instances.scores > threshold]
                drawn = draw(
                    utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT), instances, metadata
                )
                out_path = os.path.join(output_dir, name)
                # PIL picks the format from the name, which the temporary file does not end in.
                file_format = Image.registered_extensions()[os.path.splitext(name)[1].lower()]
                atomic_write(out_path, lambda f: Image.fromarray(drawn).save(f, file_format))
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

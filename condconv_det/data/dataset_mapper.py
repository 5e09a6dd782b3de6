"""The dataset mapper for SSD: detectron2's ``DatasetMapper`` with SSD's augmentation, and
objects dropped when a crop leaves their centre out."""

import copy
import logging
from typing import Any, Dict, List, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from condconv_det.config import check_ssd_input_config

from .images import read_image
from .transforms import (
    RandomExpand,
    RandomMinIoUCrop,
    RandomPhotometricDistort,
    box_centers_in_crop,
)

__all__ = ["SSDDatasetMapper", "build_ssd_augmentation", "build_test_augmentation"]


def build_ssd_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """SSD's augmentation from ``cfg.INPUT.SSD`` (checked by
    :func:`condconv_det.config.check_ssd_input_config`).

    Training: photometric distortion, expand, min-IoU crop, horizontal flip (each as enabled in
    the config), then resize to ``SIZE x SIZE``. Inference: only the resize. The expand canvas is
    filled with ``cfg.MODEL.PIXEL_MEAN``, which detectron2 gives in ``cfg.INPUT.FORMAT``'s
    channel order, so the canvas is 0 after the model's normalization.

    Args:
        cfg: a config with ``add_condconv_config`` applied.
        is_train: whether to build the training augmentation.

    Returns:
        the augmentations, in order.
    """
    check_ssd_input_config(cfg)
    c = cfg.INPUT.SSD
    resize = T.Resize((c.SIZE, c.SIZE))
    if not is_train:
        return [resize]
    augs: List[T.Augmentation] = []
    if c.PHOTOMETRIC:
        augs.append(
            RandomPhotometricDistort(
                brightness_delta=c.BRIGHTNESS_DELTA,
                contrast_range=tuple(c.CONTRAST_RANGE),
                saturation_range=tuple(c.SATURATION_RANGE),
                hue_delta=c.HUE_DELTA,
                image_format=cfg.INPUT.FORMAT,
            )
        )
    if c.EXPAND:
        augs.append(
            RandomExpand(c.EXPAND_MAX_RATIO, fill=tuple(cfg.MODEL.PIXEL_MEAN), prob=c.EXPAND_PROB)
        )
    if c.MIN_IOU_CROP:
        augs.append(
            RandomMinIoUCrop(
                tuple(c.CROP_MIN_IOUS),
                min_scale=c.CROP_MIN_SCALE,
                aspect_range=tuple(c.CROP_ASPECT_RANGE),
                num_trials=c.CROP_TRIALS,
            )
        )
    if c.FLIP:
        augs.append(T.RandomFlip(horizontal=True))
    augs.append(resize)
    return augs


def build_test_augmentation(cfg) -> List[T.Augmentation]:
    """The test-time transforms of the evaluation data loader, for the tools that run a model on
    images of their own (demo, export): SSD's fixed-size resize (``INPUT.SSD.SIZE``), or
    detectron2's ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)`` for other detectors."""
    if cfg.MODEL.META_ARCHITECTURE == "SSD":
        return build_ssd_augmentation(cfg, is_train=False)
    return utils.build_augmentation(cfg, is_train=False)


class SSDDatasetMapper:
    """Maps a detectron2 dataset dict to the model's input, with SSD's augmentation.

    Like detectron2's ``DatasetMapper`` (boxes only: segmentations and keypoints are dropped):

    1. read the image in ``image_format`` with :func:`~condconv_det.data.images.read_image` (a
       grayscale file becomes 3 channels for "RGB" and "BGR"; 16-bit and float files are scaled
       to 0..255) and check its size against the record's;
    2. drop crowd annotations (they neither steer the crop nor become instances);
    3. apply the augmentations, which see the boxes (``AugInput(image, boxes=...)``);
    4. keep an object iff the centre of its transformed box lies strictly inside the output
       image, then clip the boxes to the image and drop empty ones. After a
       :class:`~condconv_det.data.transforms.RandomMinIoUCrop`, this keeps exactly the objects
       whose centre is in the crop (SSD's rule): the transforms after the crop (flip, resize) map
       the crop onto the whole image, and the ones before it (expand) keep every centre in.

    The output holds ``"image"`` (``(C, H, W)`` uint8 tensor), ``"instances"`` (training only,
    ``gt_boxes`` and ``gt_classes``, possibly empty) and the record's fields, among them the
    original ``"height"`` and ``"width"``, to which detectron2 rescales the predictions.
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool = True,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str = "RGB",
    ):
        """
        Args:
            is_train: whether the output is for training (with instances) or inference.
            augmentations: augmentations or deterministic transforms applied in order.
            image_format: an image format of :func:`detectron2.data.detection_utils.read_image`
                ("RGB", "BGR", "L", ...).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(
            f"[SSDDatasetMapper] Augmentations used in {mode}: {augmentations}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        return {
            "is_train": is_train,
            "augmentations": build_ssd_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """
        Args:
            dataset_dict: one image's record, in detectron2's dataset format.

        Returns:
            the model's input for that image (see the class docstring).
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict)
        utils.check_image_size(dataset_dict, image)

        annos = [obj for obj in dataset_dict.pop("annotations", []) if obj.get("iscrowd", 0) == 0]
        boxes = np.array(
            [BoxMode.convert(obj["bbox"], obj["bbox_mode"], BoxMode.XYXY_ABS) for obj in annos],
            dtype=np.float64,
        ).reshape(-1, 4)
        aug_input = T.AugInput(image, boxes=boxes)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return dataset_dict

        keep = box_centers_in_crop(aug_input.boxes, (0, 0, image_shape[1], image_shape[0]))
        annos = [
            utils.transform_instance_annotations(_boxes_only(obj), transforms, image_shape)
            for obj, k in zip(annos, keep)
            if k
        ]
        instances = utils.annotations_to_instances(annos, image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict

    def _read_image(self, dataset_dict: Dict[str, Any]) -> np.ndarray:
        try:
            return read_image(dataset_dict["file_name"], self.image_format)
        except OSError as e:  # names the file; the record says where it comes from
            record = {k: v for k, v in dataset_dict.items() if k != "annotations"}
            record["annotations"] = f"<{len(dataset_dict.get('annotations', []))} annotations>"
            raise OSError(f"{e}; dataset record: {record}") from e


def _boxes_only(obj: Dict[str, Any]) -> Dict[str, Any]:
    obj.pop("segmentation", None)
    obj.pop("keypoints", None)
    return obj

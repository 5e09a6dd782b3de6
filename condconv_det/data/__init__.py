"""Data: the bundled shapes dataset, SSD augmentations, the SSD dataset mapper and its image
reader (also the tools')."""
from .dataset_mapper import SSDDatasetMapper, build_ssd_augmentation
from .datasets import (  # registers shapes_, shapes_plain_, shapes_single_, digits_
    DIGITS_DATASETS,
    SHAPES_DATASETS,
    SHAPES_PLAIN_DATASETS,
    SHAPES_SINGLE_DATASETS,
    check_coco_dataset,
    default_shapes_root,
    load_coco_json_checked,
    register_coco_checked,
    register_digits,
    register_shapes,
    register_shapes_plain,
    register_shapes_single,
)
from .images import read_image
from .shapes import BACKGROUNDS, CONTENTS, DIGITS_CLASSES, SHAPES_CLASSES, generate_shapes_dataset
from .transforms import (
    ExpandTransform,
    PhotometricDistortTransform,
    RandomExpand,
    RandomMinIoUCrop,
    RandomPhotometricDistort,
)

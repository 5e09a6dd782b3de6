"""Data: the bundled shapes dataset, COCO-format datasets given by their files, SSD
augmentations, the SSD dataset mapper and its image reader (also the tools'), and the image
files the tools find and write."""

from .coco_json import (
    CocoJsonSplit,
    check_same_categories,
    coco_json_dataset_name,
    register_coco_json,
)
from .dataset_mapper import SSDDatasetMapper, build_ssd_augmentation, build_test_augmentation
from .datasets import (  # registers shapes_, shapes_plain_, shapes_single_, digits_
    DIGITS_DATASETS,
    SHAPES_DATASETS,
    SHAPES_LARGE_DATASETS,
    SHAPES_PLAIN_DATASETS,
    SHAPES_SINGLE_DATASETS,
    check_coco_dataset,
    default_shapes_root,
    load_coco_json_checked,
    read_coco_json,
    register_coco_checked,
    register_digits,
    register_shapes,
    register_shapes_large,
    register_shapes_plain,
    register_shapes_single,
)
from .images import (
    IMAGE_EXTENSIONS,
    expand_image_inputs,
    image_output_names,
    read_image,
    write_image,
)
from .shapes import BACKGROUNDS, CONTENTS, DIGITS_CLASSES, SHAPES_CLASSES, generate_shapes_dataset
from .transforms import (
    ExpandTransform,
    PhotometricDistortTransform,
    RandomExpand,
    RandomMinIoUCrop,
    RandomPhotometricDistort,
)

"""COCO data for SSD, as L(...) nodes: SSD's augmentation through ``SSDDatasetMapper`` at 300x300
(``INPUT.SSD.*`` of Base-SSD-CondConv.yaml) and COCO box AP.

The augmentations are listed in the order ``build_ssd_augmentation`` applies them: photometric
distortion, zoom out, min-IoU crop, flip, then the resize to a fixed square (inference: the
resize only). Drop one from the list to switch it off.
"""

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from condconv_det.data import (
    RandomExpand,
    RandomMinIoUCrop,
    RandomPhotometricDistort,
    SSDDatasetMapper,
)
from condconv_det.engine import has_native_coco_eval

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(SSDDatasetMapper)(
        is_train=True,
        augmentations=[
            L(RandomPhotometricDistort)(
                brightness_delta=32.0,
                contrast_range=[0.5, 1.5],
                saturation_range=[0.5, 1.5],
                hue_delta=18.0,
                image_format="RGB",  # as the mapper's image_format
            ),
            # The canvas is the pixel mean (RGB), which normalises to 0.
            L(RandomExpand)(max_ratio=4.0, fill=[123.675, 116.28, 103.53], prob=0.5),
            L(RandomMinIoUCrop)(
                min_ious=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9],
                min_scale=0.3,
                aspect_range=[0.5, 2.0],
                num_trials=50,
            ),
            L(T.RandomFlip)(horizontal=True),
            L(T.Resize)(shape=[300, 300]),
        ],
        image_format="RGB",
    ),
    total_batch_size=64,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(SSDDatasetMapper)(
        is_train=False,
        augmentations=[L(T.Resize)(shape=[300, 300])],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    tasks=["bbox"],
    output_dir="${...train.output_dir}/inference",
    # pycocotools' evaluator when detectron2 was built without its C++ one.
    use_fast_impl=L(has_native_coco_eval)(),
)

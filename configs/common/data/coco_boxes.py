"""COCO data for box detectors: detectron2's (its model zoo's common/data/coco.py), reading RGB
images, without instance masks, evaluated for box AP."""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from condconv_det.engine import has_native_coco_eval

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.update(image_format="RGB", use_instance_mask=False)
dataloader.evaluator.update(
    tasks=["bbox"],
    output_dir="${...train.output_dir}/inference",
    # pycocotools' evaluator when detectron2 was built without its C++ one.
    use_fast_impl=L(has_native_coco_eval)(),
)

"""SSD300 with CondConv-MobileNetV1, 8 experts from layer 7 on: the CondConv paper's SSD
experiment (22.4 mAP), the LazyConfig twin of ssd300_condconv_MNv1.yaml. About 100 epochs of COCO
train2017 at a batch of 64, SGD with cosine decay."""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from ..common.data.ssd_coco import dataloader
from ..common.models.ssd_mobilenet import model

optimizer = get_config("common/optim.py").SGD
optimizer.update(lr=0.05, momentum=0.9, weight_decay=0.00004)  # MobileNet's weight decay

# Cosine decay after 1000 warm-up iterations (fractions of train.max_iter).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=1000 / 180000,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = get_config("common/train.py").train
train.update(weights_match="pretrained", init_checkpoint="", max_iter=180000, eval_period=0)
train.checkpointer.period = 10000

"""CondConv-ResNet-50-FPN RetinaNet, 8 experts in res5, detectron2's 1x schedule: the LazyConfig
twin of retinanet_condconv_R_50_FPN_1x.yaml. ImageNet weights: convert torchvision's with
tools/convert_pretrained.py and set train.init_checkpoint (see the YAML's base)."""

from detectron2.model_zoo import get_config

from ..common.data.coco_boxes import dataloader
from ..common.models.retinanet_condconv_resnet import model

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.01  # RetinaNet's

# 90k iterations at 16 images, steps at 60k and 80k, 1000 warm-up iterations.
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x

train = get_config("common/train.py").train
train.update(weights_match="pretrained", init_checkpoint="", max_iter=90000, eval_period=0)

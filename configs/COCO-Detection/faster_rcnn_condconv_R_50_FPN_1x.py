"""detectron2's Faster R-CNN R-50-FPN 1x with only the backbone swapped for CondConv-ResNet-50
(CondConv in res5, 8 experts): the LazyConfig twin of faster_rcnn_condconv_R_50_FPN_1x.yaml.

The model is detectron2's Mask R-CNN lazy config without its mask branch; the MSRA ImageNet
weights are upcycled into the CondConv blocks on load (condconv_det.checkpoint).
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import BasicStem, ResNet

from condconv_det.modeling.backbone import make_condconv_resnet_stages

from ..common.data.coco_boxes import dataloader

model = get_config("common/models/mask_rcnn_fpn.py").model
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
model.backbone.bottom_up = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
    stages=L(make_condconv_resnet_stages)(
        depth=50,
        condconv_stages=["res5"],
        num_experts=8,  # 0: the static twin, exactly detectron2's ResNet
        routing="block",
        routing_activation="sigmoid",
        routing_temperature=1.0,
        routing_dropout=0.0,
        norm="FrozenBN",
        stride_in_1x1=True,  # MSRA's (Caffe) ResNet strides in the first 1x1 conv
        out_features="${..out_features}",
        router_init="glorot",
        condconv_options=dict(expert_dropout=0.1),  # DropExpert, as the YAML twin
    ),
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=2,
)

# detectron2's inputs: BGR, Caffe's pixel mean (set in the model config), unit std.
dataloader.train.mapper.image_format = "BGR"

optimizer = get_config("common/optim.py").SGD  # lr 0.02 at 16 images
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x

train = get_config("common/train.py").train
train.update(
    weights_match="pretrained",
    init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    max_iter=90000,
    eval_period=0,
)

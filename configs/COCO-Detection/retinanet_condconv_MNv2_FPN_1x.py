"""CondConv-MobileNetV2-FPN RetinaNet, 8 experts in the last three stages (the table's placement),
detectron2's 1x schedule: the LazyConfig twin of retinanet_condconv_MNv2_FPN_1x.yaml."""

from detectron2.config import LazyCall as L

from condconv_det.modeling.backbone import MobileNet

from .retinanet_condconv_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up = L(MobileNet)(
    arch="mobilenet_v2",
    in_channels=3,
    width_mult=1.0,
    num_experts=8,  # 0: the static twin
    routing="block",
    routing_activation="sigmoid",
    routing_temperature=1.0,
    routing_dropout=0.0,
    norm="FrozenBN",
    out_features=["res3", "res4", "res5"],
    freeze_at=2,
    router_init="glorot",
    condconv_options=dict(expert_dropout=0.1),  # DropExpert, as the YAML twin's base
)
# P6 grows from res5: the 320 channels of MobileNetV2's last table row at width 1.0.
model.backbone.top_block.update(in_channels=320, in_feature="res5")

"""RetinaNet with a CondConv-ResNet-50-FPN, as L(...) nodes: detectron2's RetinaNet lazy config
(its model zoo's common/models/retinanet.py) with the bottom-up swapped for a CondConv-ResNet
(CondConv in res5, 8 experts) and the inputs of Base-RetinaNet-CondConv.yaml (RGB, torchvision's
normalisation, since the ImageNet weights come from torchvision through
tools/convert_pretrained.py).
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import BasicStem, ResNet

from condconv_det.modeling.backbone import make_condconv_resnet_stages

model = get_config("common/models/retinanet.py").model

model.backbone.bottom_up = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
    stages=L(make_condconv_resnet_stages)(
        depth=50,
        # The paper's CondConv-ResNet-50 overhead (about +120M multiply-adds) matches res5.
        condconv_stages=["res5"],
        num_experts=8,  # 0: the static twin, exactly detectron2's ResNet
        routing="block",
        routing_activation="sigmoid",
        routing_temperature=1.0,
        routing_dropout=0.0,
        norm="FrozenBN",
        stride_in_1x1=False,  # torchvision's ResNet strides in the 3x3 conv
        out_features="${..out_features}",
        router_init="glorot",
        # DropExpert 0.1 (MODEL.CONDCONV.EXPERT_DROPOUT in Base-RetinaNet-CondConv.yaml).
        condconv_options=dict(expert_dropout=0.1),
    ),
    out_features=["res3", "res4", "res5"],
    freeze_at=2,
)
# P6 grows from res5 (2048 channels), as in detectron2's RetinaNet.
model.backbone.top_block.update(in_channels=2048, in_feature="res5")
model.update(
    pixel_mean=[123.675, 116.28, 103.53],  # RGB, ImageNet statistics (torchvision)
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
    smooth_l1_beta=0.0,  # L1 box loss, as detectron2's Base-RetinaNet.yaml
)

"""Backbones, registered in detectron2's BACKBONE_REGISTRY on import."""

from .fpn import (
    build_condconv_mobilenet_fpn_backbone,
    build_condconv_resnet_fpn_backbone,
    build_condconv_retinanet_mobilenet_fpn_backbone,
    build_condconv_retinanet_resnet_fpn_backbone,
)
from .mobilenet import (
    ARCHS,
    MobileNet,
    MobileNetArch,
    StageSpec,
    build_condconv_mobilenet_backbone,
    mobilenet_block_names,
)
from .resnet import (
    CondConvBasicBlock,
    CondConvBottleneckBlock,
    build_condconv_resnet_backbone,
    make_condconv_resnet_stages,
)
from .ssd_extras import (
    SSDBackbone,
    build_condconv_mobilenet_ssd_backbone,
    build_condconv_resnet_ssd_backbone,
)

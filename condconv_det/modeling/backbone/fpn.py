"""FPN backbones over the CondConv bottom-ups, as detectron2 builds them over ResNet.

For every family two builders are registered: ``..._fpn_backbone`` (P2-P6 with a max-pooled
P6, for R-CNN) and ``build_condconv_retinanet_..._fpn_backbone`` (P3-P7 from
``LastLevelP6P7``, for RetinaNet). Each reads ``MODEL.FPN.*`` as detectron2's do, so swapping
``MODEL.BACKBONE.NAME`` in a model-zoo config is all it takes.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from .mobilenet import build_condconv_mobilenet_backbone
from .resnet import build_condconv_resnet_backbone

__all__ = [
    "build_condconv_resnet_fpn_backbone",
    "build_condconv_retinanet_resnet_fpn_backbone",
    "build_condconv_mobilenet_fpn_backbone",
    "build_condconv_retinanet_mobilenet_fpn_backbone",
]


def _check_in_features(cfg, bottom_up: Backbone) -> None:
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES asks for {missing}, which the bottom-up backbone does not "
            f"output ({sorted(bottom_up.output_shape())}); add them to its OUT_FEATURES "
            "(MODEL.RESNETS.OUT_FEATURES or MODEL.MOBILENET.OUT_FEATURES)"
        )


def _fpn(cfg, bottom_up: Backbone) -> FPN:
    _check_in_features(cfg, bottom_up)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def _retinanet_fpn(cfg, bottom_up: Backbone) -> FPN:
    _check_in_features(cfg, bottom_up)
    last = cfg.MODEL.FPN.IN_FEATURES[-1]
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    # P6 from the last bottom-up feature (C5), as detectron2's RetinaNet backbone does; the
    # feature is named explicitly since LastLevelP6P7 defaults to "res5".
    top_block = LastLevelP6P7(
        bottom_up.output_shape()[last].channels, out_channels, in_feature=last
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_condconv_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    return _fpn(cfg, build_condconv_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_condconv_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    return _retinanet_fpn(cfg, build_condconv_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_condconv_mobilenet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    return _fpn(cfg, build_condconv_mobilenet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_condconv_retinanet_mobilenet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    return _retinanet_fpn(cfg, build_condconv_mobilenet_backbone(cfg, input_shape))

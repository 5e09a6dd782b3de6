"""SSD's class and box predictors: one small conv per feature level and task."""

from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from condconv_det.config import condconv_options
from condconv_det.layers import check_router_init, set_up_routers

from ..conv import make_ssd_conv
from .default_boxes import DefaultBoxGenerator

__all__ = ["SSDHead"]


class SSDHead(nn.Module):
    """SSD's predictors (Liu et al. 2016, sec. 2.1): at each level, a 3x3 conv outputs, per
    location, ``A_k (K + 1)`` class logits and ``A_k 4`` box deltas. SSDLite's (Sandler et al.
    2018, sec. 6.2) is depthwise-separable: depthwise 3x3 + norm + ReLU6, then a 1x1 conv.

    The class and box predictors are built by one routine and differ only in their outputs per
    box. Output convs start from N(0, 0.01) with zero bias (detectron2's RetinaNet head), so
    every class starts near 1 / (K + 1).

    Args:
        input_shape: shapes of the feature levels.
        num_classes: K, object classes; the class logits also hold background, at index K.
        num_anchors: default boxes per location at each level (``A_k``).
        depthwise: SSDLite predictors.
        norm: norm after the depthwise conv (``get_norm`` name, "" for none).
        num_experts: CondConv experts in every predictor conv (own routers); 0: static.
        routing_activation, routing_temperature, routing_dropout: see ``CondConvRouter``.
        router_init: None keeps each router's own (Glorot) initialisation; "glorot" or "zeros"
            re-initialises every router of the head (``MODEL.CONDCONV.ROUTER_INIT``).
        condconv_options: keyword arguments of :func:`~condconv_det.layers.configure_condconv`
            applied to the head once built; None: none.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: Sequence[int],
        depthwise: bool = False,
        norm="BN",
        num_experts: int = 0,
        routing_activation: str = "sigmoid",
        routing_temperature: float = 1.0,
        routing_dropout: float = 0.0,
        router_init: Optional[str] = None,
        condconv_options: Optional[dict] = None,
    ):
        super().__init__()
        check_router_init(router_init)
        if len(num_anchors) != len(input_shape):
            raise ValueError(
                f"num_anchors has {len(num_anchors)} entries for {len(input_shape)} levels"
            )
        self.num_classes = num_classes
        channels = [s.channels for s in input_shape]
        common = dict(
            depthwise=depthwise,
            norm=norm,
            num_experts=num_experts,
            router_kwargs=dict(
                activation=routing_activation,
                temperature=routing_temperature,
                dropout=routing_dropout,
            ),
        )
        self.cls_score = _predictors(channels, num_anchors, num_classes + 1, **common)
        self.bbox_pred = _predictors(channels, num_anchors, 4, **common)
        set_up_routers(self, router_init, condconv_options)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        c = cfg.MODEL.CONDCONV
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "num_anchors": DefaultBoxGenerator(cfg, input_shape).num_cell_anchors,
            "depthwise": cfg.MODEL.SSD.HEAD_DEPTHWISE,
            "norm": cfg.MODEL.SSD.NORM,
            "num_experts": cfg.MODEL.SSD.HEAD_NUM_EXPERTS,
            "routing_activation": c.ROUTING_ACTIVATION,
            "routing_temperature": c.ROUTING_TEMPERATURE,
            "routing_dropout": c.ROUTING_DROPOUT,
            "router_init": c.ROUTER_INIT,
            "condconv_options": condconv_options(cfg),
        }

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            features: the L feature maps, each (N, C_k, H_k, W_k).

        Returns:
            logits: L tensors, each (N, A_k * (K + 1), H_k, W_k).
            bbox_reg: L tensors, each (N, A_k * 4, H_k, W_k), deltas (dx, dy, dw, dh) of the
                default boxes.
        """
        if len(features) != len(self.cls_score):
            raise ValueError(f"SSDHead has {len(self.cls_score)} levels, got {len(features)} maps")
        # Indexing by enumerate, not zip(ModuleList, list): TorchScript can only unroll a loop
        # over a ModuleList whose partner has a static length, and a list input has none.
        logits: List[torch.Tensor] = []
        bbox_reg: List[torch.Tensor] = []
        for level, predictor in enumerate(self.cls_score):
            logits.append(predictor(features[level]))
        for level, predictor in enumerate(self.bbox_pred):
            bbox_reg.append(predictor(features[level]))
        return logits, bbox_reg


def _predictors(
    channels: Sequence[int],
    num_anchors: Sequence[int],
    dim_per_box: int,
    *,
    depthwise: bool,
    norm,
    num_experts: int,
    router_kwargs: dict,
) -> nn.ModuleList:
    """The predictors of one task (classes or boxes): per level, C_k channels to
    ``A_k * dim_per_box``, by a 3x3 conv or (``depthwise``) depthwise 3x3 + norm + ReLU6 + 1x1."""
    common = dict(num_experts=num_experts, router_kwargs=router_kwargs)
    levels = []
    for in_channels, anchors in zip(channels, num_anchors):
        out_channels = anchors * dim_per_box
        if depthwise:
            dw = make_ssd_conv(in_channels, in_channels, 3, groups=in_channels, norm=norm, **common)
            out = make_ssd_conv(in_channels, out_channels, 1, activation=False, **common)
            levels.append(nn.Sequential(dw, out))
        else:
            out = make_ssd_conv(in_channels, out_channels, 3, activation=False, **common)
            levels.append(out)
        nn.init.normal_(out.weight, mean=0.0, std=0.01)  # every expert, if CondConv
        nn.init.zeros_(out.bias)
    return nn.ModuleList(levels)

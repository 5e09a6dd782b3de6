"""CondConv-ResNet: detectron2's ResNet with CondConv residual blocks in chosen stages.

The stem, the stages and the ResNet class are detectron2's own (``BasicStem``, ``ResNet``,
``ResNet.make_stage``). A stage without CondConv is built from detectron2's
``BottleneckBlock`` / ``BasicBlock``, so a model with zero experts is detectron2's ResNet,
parameter names included, and standard checkpoints load into it.
"""

from typing import List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

from condconv_det.config import check_condconv_config, check_config, condconv_options
from condconv_det.layers import (
    CondConv2dNorm,
    CondConvRouter,
    check_router_init,
    msra_fill_experts,
    set_up_routers,
)

from ..conv import ROUTING_SCOPES

__all__ = [
    "CondConvBottleneckBlock",
    "CondConvBasicBlock",
    "make_condconv_resnet_stages",
    "build_condconv_resnet_backbone",
]

RESNET_STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _projection_shortcut(
    in_channels: int, out_channels: int, stride: int, norm
) -> Optional[Conv2d]:
    """detectron2's static 1x1 projection shortcut, or None where the identity fits."""
    if in_channels == out_channels:
        return None
    shortcut = Conv2d(
        in_channels,
        out_channels,
        kernel_size=1,
        stride=stride,
        bias=False,
        norm=get_norm(norm, out_channels),
    )
    weight_init.c2_msra_fill(shortcut)
    return shortcut


class _CondConvBlockMixin:
    """Routing shared by the CondConv residual blocks."""

    def _init_routing(
        self,
        in_channels,
        num_experts,
        routing,
        routing_activation,
        routing_temperature,
        routing_dropout,
    ):
        if routing not in ROUTING_SCOPES:
            raise ValueError(f"routing must be one of {ROUTING_SCOPES}, got {routing!r}")
        self._router_kwargs = dict(
            activation=routing_activation, temperature=routing_temperature, dropout=routing_dropout
        )
        self.num_experts = num_experts
        self.routing = routing
        # One router for the whole block, fed by the block's input.
        self.router = (
            CondConvRouter(in_channels, num_experts, **self._router_kwargs)
            if routing == "block"
            else None
        )

    def _conv(
        self,
        in_channels,
        out_channels,
        *,
        kernel_size,
        norm,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
    ):
        router = None
        if self.routing == "layer":
            router = CondConvRouter(in_channels, self.num_experts, **self._router_kwargs)
        conv = CondConv2dNorm(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
            num_experts=self.num_experts,
            norm=get_norm(norm, out_channels),
            router=router,
        )
        return msra_fill_experts(conv)  # as detectron2 initialises its blocks' convs

    def _route(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        return self.router(x) if self.router is not None else None


class CondConvBottleneckBlock(_CondConvBlockMixin, CNNBlockBase):
    """detectron2's ``BottleneckBlock`` with CondConv 1x1, 3x3 and 1x1 convs.

    The projection shortcut stays a static conv (as in ODConv's and KernelWarehouse's ResNets):
    it adds no capacity where the block's convs already route.

    Args:
        in_channels, out_channels, bottleneck_channels, stride, num_groups, norm,
            stride_in_1x1, dilation: as for detectron2's ``BottleneckBlock``.
        num_experts: experts per CondConv.
        routing: "block" (one router on the block's input) or "layer" (a router per conv).
        routing_activation, routing_temperature, routing_dropout: see :class:`CondConvRouter`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        num_experts: int = 8,
        routing: str = "block",
        routing_activation: str = "sigmoid",
        routing_temperature: float = 1.0,
        routing_dropout: float = 0.0,
    ):
        super().__init__(in_channels, out_channels, stride)
        self._init_routing(
            in_channels,
            num_experts,
            routing,
            routing_activation,
            routing_temperature,
            routing_dropout,
        )
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = self._conv(
            in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, norm=norm
        )
        self.conv2 = self._conv(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            norm=norm,
        )
        self.conv3 = self._conv(bottleneck_channels, out_channels, kernel_size=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self._route(x)
        out = F.relu_(self.conv1(x, r))
        out = F.relu_(self.conv2(out, r))
        out = self.conv3(out, r)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class CondConvBasicBlock(_CondConvBlockMixin, CNNBlockBase):
    """detectron2's ``BasicBlock`` (ResNet-18/34) with CondConv 3x3 convs; static shortcut.

    Args: as :class:`CondConvBottleneckBlock`, without the bottleneck arguments.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm="BN",
        num_experts: int = 8,
        routing: str = "block",
        routing_activation: str = "sigmoid",
        routing_temperature: float = 1.0,
        routing_dropout: float = 0.0,
    ):
        super().__init__(in_channels, out_channels, stride)
        self._init_routing(
            in_channels,
            num_experts,
            routing,
            routing_activation,
            routing_temperature,
            routing_dropout,
        )
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = self._conv(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, norm=norm
        )
        self.conv2 = self._conv(out_channels, out_channels, kernel_size=3, padding=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self._route(x)
        out = F.relu_(self.conv1(x, r))
        out = self.conv2(out, r)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def make_condconv_resnet_stages(
    depth: int,
    *,
    condconv_stages: Sequence[str] = ("res5",),
    num_experts: int = 8,
    routing: str = "block",
    routing_activation: str = "sigmoid",
    routing_temperature: float = 1.0,
    routing_dropout: float = 0.0,
    norm="BN",
    stem_out_channels: int = 64,
    res2_out_channels: int = 256,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = True,
    res5_dilation: int = 1,
    out_features: Optional[Sequence[str]] = None,
    router_init: Optional[str] = None,
    condconv_options: Optional[dict] = None,
) -> List[List[CNNBlockBase]]:
    """The stages of a (CondConv-)ResNet, for ``detectron2.modeling.ResNet(stem, stages, ...)``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        condconv_stages: stages ("res2".."res5") built from CondConv blocks.
        num_experts: experts per CondConv; 0 builds every stage from detectron2's plain blocks.
        routing, routing_activation, routing_temperature, routing_dropout: see
            :class:`CondConvBottleneckBlock`.
        norm, stem_out_channels, res2_out_channels, num_groups, width_per_group, stride_in_1x1,
            res5_dilation: as ``MODEL.RESNETS.*`` in detectron2.
        out_features: if given, stages after the last one listed are not built.
        router_init: None keeps each router's own (Glorot) initialisation; "glorot" or "zeros"
            re-initialises every router once the stages are built (``MODEL.CONDCONV.ROUTER_INIT``).
        condconv_options: keyword arguments of :func:`~condconv_det.layers.configure_condconv`
            (CondConv's training options: static kernel, router design, ...) applied once built;
            None: none. The YAML builders pass ``condconv_options(cfg)``.

    Returns:
        list of stages, each a list of blocks.
    """
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    unknown = [s for s in condconv_stages if s not in RESNET_STAGE_NAMES]
    if unknown:
        raise ValueError(
            f"condconv_stages must be among {RESNET_STAGE_NAMES}, got {list(condconv_stages)}"
        )
    if num_experts < 0:
        raise ValueError(f"num_experts must be >= 0, got {num_experts}")
    check_router_init(router_init)
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation}")
    basic = depth in (18, 34)
    if basic and (res2_out_channels != 64 or res5_dilation != 1 or num_groups != 1):
        raise ValueError(
            "ResNet-18/34 need res2_out_channels=64, res5_dilation=1 and num_groups=1 "
            "(MODEL.RESNETS.RES2_OUT_CHANNELS / RES5_DILATION / NUM_GROUPS)"
        )
    num_stages = 4
    if out_features is not None:
        num_stages = max(
            [RESNET_STAGE_NAMES.index(f) + 1 for f in out_features if f in RESNET_STAGE_NAMES] + [0]
        )

    in_channels, out_channels = stem_out_channels, res2_out_channels
    bottleneck_channels = num_groups * width_per_group
    stages = []
    for idx, name in enumerate(RESNET_STAGE_NAMES[:num_stages]):
        dilation = res5_dilation if name == "res5" else 1
        first_stride = 1 if idx == 0 or (name == "res5" and dilation == 2) else 2
        num_blocks = _BLOCKS_PER_STAGE[depth][idx]
        kwargs = dict(
            num_blocks=num_blocks,
            stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            in_channels=in_channels,
            out_channels=out_channels,
            norm=norm,
        )
        condconv = name in condconv_stages and num_experts > 0
        if not basic:
            kwargs.update(
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
                num_groups=num_groups,
            )
        if condconv:
            kwargs.update(
                num_experts=num_experts,
                routing=routing,
                routing_activation=routing_activation,
                routing_temperature=routing_temperature,
                routing_dropout=routing_dropout,
            )
            block_class = CondConvBasicBlock if basic else CondConvBottleneckBlock
        else:
            block_class = BasicBlock if basic else BottleneckBlock
        stages.append(ResNet.make_stage(block_class=block_class, **kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    for block in (b for stage in stages for b in stage):
        set_up_routers(block, router_init, condconv_options)
    return stages


@BACKBONE_REGISTRY.register()
def build_condconv_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """CondConv-ResNet from ``MODEL.RESNETS.*`` (detectron2's keys) and ``MODEL.CONDCONV.*``."""
    check_config(cfg, check_condconv_config)
    r, c = cfg.MODEL.RESNETS, cfg.MODEL.CONDCONV
    if r.DEPTH in (18, 34) and r.RES2_OUT_CHANNELS != 64:
        raise ValueError(
            f"MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for ResNet-{r.DEPTH}, "
            f"got {r.RES2_OUT_CHANNELS}"
        )
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE is not supported by build_condconv_resnet_backbone; "
            "use detectron2's build_resnet_backbone for deformable convs"
        )
    stem = BasicStem(
        in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM
    )
    stages = make_condconv_resnet_stages(
        r.DEPTH,
        condconv_stages=c.RESNET_STAGES,
        num_experts=c.NUM_EXPERTS,
        routing=c.ROUTING,
        routing_activation=c.ROUTING_ACTIVATION,
        routing_temperature=c.ROUTING_TEMPERATURE,
        routing_dropout=c.ROUTING_DROPOUT,
        norm=r.NORM,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        stride_in_1x1=r.STRIDE_IN_1X1,
        res5_dilation=r.RES5_DILATION,
        out_features=r.OUT_FEATURES,
        router_init=c.ROUTER_INIT,
        condconv_options=condconv_options(cfg),
    )
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)

"""CondConv-MobileNet family: MobileNetV1, MobileNetV2, EfficientNet-B0/B1 from typed tables.

Each architecture is a table of stages (a row: block type, kernel, stride, expansion, output
channels, repeats, squeeze-excitation ratio, experts), decoded by one builder. The experts
column says where CondConv goes; the same table with zero experts is the exact static twin.

Outputs are named by stride like detectron2's ResNet ("res2".."res5" at strides 4..32, "stem"
at stride 2, "head" for the final 1x1 conv), so detectron2's FPN and RetinaNet configs apply
as they are.

EfficientNet's compound scaling is the constructor's ``width_mult`` and ``depth_mult``;
``bn_eps`` and ``padding="tf_same"`` reproduce ports of TensorFlow checkpoints exactly (timm's
``tf_efficientnet_cc_*``, see :func:`condconv_det.checkpoint.timm_efficientnet_to_condconv`).
"""

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from torch import nn

from condconv_det.config import check_condconv_config, check_config, condconv_options
from condconv_det.layers import (
    CondConv2dNorm,
    CondConvRouter,
    check_router_init,
    set_up_routers,
)

from ..conv import ROUTING_SCOPES

__all__ = [
    "StageSpec",
    "MobileNetArch",
    "ARCHS",
    "PADDING_MODES",
    "MobileNet",
    "DepthwiseSeparableBlock",
    "InvertedResidualBlock",
    "mobilenet_block_names",
    "scale_depth",
    "tf_same_pad",
    "build_condconv_mobilenet_backbone",
]


class StageSpec(NamedTuple):
    """One row of an architecture table: ``repeats`` blocks of one kind."""

    block: (
        str  # "ds": depthwise-separable (MobileNetV1); "ir": inverted residual (V2, EfficientNet)
    )
    kernel: int  # depthwise kernel size
    stride: int  # stride of the first block
    expand: int  # expansion ratio of "ir" blocks (1: no expansion conv)
    channels: int  # output channels, before the width multiplier
    repeats: int  # number of blocks
    se: float  # squeeze-excitation ratio of the block's input channels (0: none)
    experts: int  # CondConv experts per conv of these blocks (0: static convs)


class MobileNetArch(NamedTuple):
    stem_channels: int  # 3x3 stride-2 stem conv
    stages: Tuple[StageSpec, ...]
    head_channels: int  # final 1x1 conv ("head" feature); 0: none
    activation: str  # "relu", "relu6" or "swish"
    bn_eps: float  # batch-norm epsilon of every norm layer
    residual: bool  # identity shortcuts where shapes allow (V2, EfficientNet)


S = StageSpec
ARCHS: Dict[str, MobileNetArch] = {
    # Howard et al. 2017, Table 1. CondConv from layer 7 on (the paper's depth ablation on
    # CondConv-MobileNetV1: starting CondConv at layer 7 costs little accuracy).
    "mobilenet_v1": MobileNetArch(
        stem_channels=32,
        stages=(
            #  block k  s  t  c     n  se  experts
            S("ds", 3, 1, 1, 64, 1, 0.0, 0),
            S("ds", 3, 2, 1, 128, 2, 0.0, 0),
            S("ds", 3, 2, 1, 256, 2, 0.0, 0),
            S("ds", 3, 2, 1, 512, 1, 0.0, 0),
            S("ds", 3, 1, 1, 512, 5, 0.0, 8),
            S("ds", 3, 2, 1, 1024, 2, 0.0, 8),
        ),
        head_channels=0,
        activation="relu",
        bn_eps=1e-5,
        residual=False,
    ),
    # Sandler et al. 2018, Table 2 (t, c, n, s). CondConv in the last three stages (7 blocks):
    # with the head conv and classifier this accounts for the 27.5M parameters reported for
    # CondConv-MobileNetV2 with 8 experts.
    "mobilenet_v2": MobileNetArch(
        stem_channels=32,
        stages=(
            S("ir", 3, 1, 1, 16, 1, 0.0, 0),
            S("ir", 3, 2, 6, 24, 2, 0.0, 0),
            S("ir", 3, 2, 6, 32, 3, 0.0, 0),
            S("ir", 3, 2, 6, 64, 4, 0.0, 0),
            S("ir", 3, 1, 6, 96, 3, 0.0, 8),
            S("ir", 3, 2, 6, 160, 3, 0.0, 8),
            S("ir", 3, 1, 6, 320, 1, 0.0, 8),
        ),
        head_channels=1280,
        activation="relu6",
        bn_eps=1e-5,
        residual=True,
    ),
    # Tan & Le 2019, Table 1; CondConv in the last three stages (8 blocks), as the official
    # EfficientNet-CondConv release (blocks marked "_cc").
    "efficientnet_b0": MobileNetArch(
        stem_channels=32,
        stages=(
            S("ir", 3, 1, 1, 16, 1, 0.25, 0),
            S("ir", 3, 2, 6, 24, 2, 0.25, 0),
            S("ir", 5, 2, 6, 40, 2, 0.25, 0),
            S("ir", 3, 2, 6, 80, 3, 0.25, 0),
            S("ir", 5, 1, 6, 112, 3, 0.25, 8),
            S("ir", 5, 2, 6, 192, 4, 0.25, 8),
            S("ir", 3, 1, 6, 320, 1, 0.25, 8),
        ),
        head_channels=1280,
        activation="swish",
        bn_eps=1e-3,
        residual=True,
    ),
    # Tiny tables for tests: every block kind, CondConv and static stages, all five strides.
    "tiny_v1": MobileNetArch(
        stem_channels=8,
        stages=(
            S("ds", 3, 2, 1, 8, 1, 0.0, 0),
            S("ds", 3, 2, 1, 16, 1, 0.0, 2),
            S("ds", 3, 2, 1, 16, 2, 0.0, 2),
            S("ds", 3, 2, 1, 24, 1, 0.0, 2),
        ),
        head_channels=0,
        activation="relu",
        bn_eps=1e-5,
        residual=False,
    ),
    "tiny_v2": MobileNetArch(
        stem_channels=8,
        stages=(
            S("ir", 3, 1, 1, 8, 1, 0.0, 0),
            S("ir", 3, 2, 2, 8, 2, 0.0, 0),
            S("ir", 3, 2, 2, 16, 1, 0.0, 0),
            S("ir", 3, 2, 2, 16, 2, 0.0, 3),
            S("ir", 3, 2, 2, 24, 2, 0.0, 3),
        ),
        head_channels=32,
        activation="relu6",
        bn_eps=1e-5,
        residual=True,
    ),
    "tiny_effnet": MobileNetArch(
        stem_channels=8,
        stages=(
            S("ir", 3, 1, 1, 8, 1, 0.25, 0),
            S("ir", 5, 2, 2, 8, 1, 0.25, 0),
            S("ir", 3, 2, 2, 16, 1, 0.25, 2),
            S("ir", 5, 2, 2, 16, 2, 0.25, 2),
            S("ir", 3, 2, 2, 24, 1, 0.25, 2),
        ),
        head_channels=32,
        activation="swish",
        bn_eps=1e-3,
        residual=True,
    ),
}
del S


def scale_depth(repeats: int, depth_mult: float) -> int:
    """Blocks of a stage after EfficientNet's depth scaling: rounded up, as the reference code
    (and timm) do, so that B1's 1.1x adds a block to every stage."""
    return int(math.ceil(repeats * depth_mult))


# Tan & Le 2019, sec. 4: B1 is B0 with depth coefficient 1.1 (width 1.0, 240x240 input); the
# official EfficientNet-CondConv-B1 and timm's efficientnet_cc_b1_8e scale the same table.
_B0 = ARCHS["efficientnet_b0"]
ARCHS["efficientnet_b1"] = _B0._replace(
    stages=tuple(row._replace(repeats=scale_depth(row.repeats, 1.1)) for row in _B0.stages)
)
del _B0

FEATURE_STRIDES = {"stem": 2, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


class _BlockSpec(NamedTuple):
    """One block of a decoded architecture table."""

    name: str  # module name, "<level>.<index in the level>": "stem.1", "res2.0", ...
    level: int  # index in FEATURE_STRIDES of the level the block ends at (0: stem)
    row_index: int  # the table row it comes from
    row: StageSpec
    stride: int  # the block's own stride: the row's for its first block, 1 for the others


def _resolve_arch(arch: Union[str, MobileNetArch]) -> MobileNetArch:
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"unknown MobileNet arch {arch!r}; known: {sorted(ARCHS)}")
        return ARCHS[arch]
    return arch


def _decode_blocks(arch: MobileNetArch, depth_mult: float) -> List[_BlockSpec]:
    """Every block of the table after depth scaling, named by the stride level it ends at. The
    stem conv is ``stem.0``, so blocks at the stem's stride start at ``stem.1``."""
    if not depth_mult > 0:
        raise ValueError(f"depth_mult must be > 0, got {depth_mult}")
    levels = list(FEATURE_STRIDES)
    level_sizes = [1] + [0] * (len(levels) - 1)
    blocks: List[_BlockSpec] = []
    stride = 2  # the stem's
    for index, row in enumerate(arch.stages):
        if row.block not in ("ds", "ir"):
            raise ValueError(f"unknown block type {row.block!r} in table row {index}")
        for repeat in range(scale_depth(row.repeats, depth_mult)):
            block_stride = row.stride if repeat == 0 else 1
            stride *= block_stride
            level = int(math.log2(stride)) - 1
            if level >= len(levels):
                raise ValueError(f"table row {index} goes past stride {2 ** len(levels)}")
            name = f"{levels[level]}.{level_sizes[level]}"
            blocks.append(_BlockSpec(name, level, index, row, block_stride))
            level_sizes[level] += 1
    return blocks


def mobilenet_block_names(arch: Union[str, MobileNetArch], depth_mult: float = 1.0) -> List[str]:
    """Module names of all the blocks of an architecture, in order, as a :class:`MobileNet` that
    builds every level names them (``stem.1``, ..., ``res2.0``, ...; the stem conv ``stem.0`` and
    the head are not blocks).

    Computed from the table alone, so that a checkpoint of the whole network can be matched to
    a backbone that stops before res5 (the checkpoint converters take these names).

    Args:
        arch: a name in :data:`ARCHS` or a :class:`MobileNetArch`.
        depth_mult: :class:`MobileNet`'s, which adds blocks to every stage.
    """
    return [block.name for block in _decode_blocks(_resolve_arch(arch), depth_mult)]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds channels to a multiple of ``divisor``, never below 90% of ``value`` (as the
    MobileNetV2 and EfficientNet reference code does)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _norm(norm, channels: int, eps: float) -> Optional[nn.Module]:
    """detectron2's ``get_norm`` with the architecture's epsilon (EfficientNet: 1e-3)."""
    module = get_norm(norm, channels)
    if module is not None and hasattr(module, "eps"):
        module.eps = eps
    return module


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU}[name](inplace=True)


# "symmetric": kernel // 2 zeros on every side (PyTorch's and detectron2's convention).
# "tf_same": TensorFlow's padding="SAME", which ports of TensorFlow checkpoints need to compute
#     what they computed there (timm's tf_efficientnet_cc_*). The output is ceil(input / stride)
#     either way, but "SAME" puts the odd pixel of padding at the bottom / right. For stride 1
#     and the tables' odd kernels that is the symmetric padding; for stride 2 it depends on
#     whether the input size is even, so those convs pad at run time (tf_same_pad).
PADDING_MODES = ("symmetric", "tf_same")


def tf_same_pad(
    x: torch.Tensor,
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    dilation: Tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Zero-pads ``x`` as TensorFlow's ``padding="SAME"`` does before a convolution.

    Args:
        x: (N, C, H, W).
        kernel_size, stride, dilation: (h, w) pairs of the convolution that follows.

    Returns:
        (N, C, H + pad_h, W + pad_w), where ``pad = max((ceil(size / s) - 1) * s + (k - 1) * d
        + 1 - size, 0)`` is split with the larger half at the bottom / right.
    """
    # Spelt out per axis (no zip over mixed sequences, no list unpacking) so that TorchScript
    # compiles it; (size + s - 1) // s is ceil(size / s) for the positive sizes of images.
    top, bottom = _same_pad_split(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    left, right = _same_pad_split(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    return F.pad(x, [left, right, top, bottom])


def _same_pad_split(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
    """(before, after) padding of one axis under "SAME": the larger half after."""
    out_size = (size + stride - 1) // stride
    total = max((out_size - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _BlockConv2d(Conv2d):
    """detectron2's ``Conv2d`` (conv, norm, activation) called as a block's CondConvs are,
    ``conv(x, routing_weights)``, the routing weights ignored: a block's forward then calls
    every conv alike, which TorchScript needs (it cannot branch on a submodule's type)."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, routing_weights: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        # Conv2d.forward inlined (TorchScript does not compile super() calls), after the
        # run-time padding hook that _TFSameConv2d overrides.
        x = self._conv_forward(self._pad(x), self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _TFSameConv2d(_BlockConv2d):
    """:class:`_BlockConv2d` after :func:`tf_same_pad`; built with ``padding=0``."""

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return tf_same_pad(x, self.kernel_size, self.stride, self.dilation)


class _TFSameCondConv2dNorm(CondConv2dNorm):
    """:class:`CondConv2dNorm` after :func:`tf_same_pad`; built with ``padding=0``."""

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        # Called by CondConv2dNorm.forward after routing: layer routing pools the layer's input
        # itself, the unpadded one, as without padding.
        return tf_same_pad(x, self.kernel_size, self.stride, self.dilation)


class SqueezeExcitation(nn.Module):
    """Channel gating: x * sigmoid(W2 act(W1 GAP(x))) (Hu et al. 2018), static as in the official
    EfficientNet-CondConv code."""

    def __init__(self, channels: int, reduced: int, activation: str):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = _activation(activation)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
    return x * mask / keep


class _MobileBlock(CNNBlockBase):
    """Builds a block's convs as static or CondConv, with block or layer routing."""

    def __init__(
        self,
        in_channels,
        out_channels,
        stride,
        *,
        num_experts,
        norm,
        bn_eps,
        routing,
        router_kwargs,
        padding="symmetric",
    ):
        super().__init__(in_channels, out_channels, stride)
        if routing not in ROUTING_SCOPES:
            raise ValueError(f"routing must be one of {ROUTING_SCOPES}, got {routing!r}")
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        self.num_experts = num_experts
        self._norm, self._bn_eps = norm, bn_eps
        self._padding = padding
        self._layer_routing = routing == "layer"
        self._router_kwargs = router_kwargs
        self.router = None
        if num_experts > 0 and routing == "block":
            self.router = CondConvRouter(in_channels, num_experts, **router_kwargs)

    def _conv(self, in_channels, out_channels, kernel, *, stride=1, groups=1, activation=None):
        norm = _norm(self._norm, out_channels, self._bn_eps)
        run_time_pad = self._padding == "tf_same" and stride > 1
        padding = 0 if run_time_pad else kernel // 2
        common = dict(stride=stride, padding=padding, groups=groups, bias=False)
        if self.num_experts == 0:
            conv_class = _TFSameConv2d if run_time_pad else _BlockConv2d
            conv = conv_class(
                in_channels, out_channels, kernel, norm=norm, activation=activation, **common
            )
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            return conv
        router = (
            CondConvRouter(in_channels, self.num_experts, **self._router_kwargs)
            if self._layer_routing
            else None
        )
        condconv_class = _TFSameCondConv2dNorm if run_time_pad else CondConv2dNorm
        conv = condconv_class(
            in_channels,
            out_channels,
            kernel,
            num_experts=self.num_experts,
            norm=norm,
            activation=activation,
            router=router,
            **common,
        )
        for expert in range(self.num_experts):
            nn.init.kaiming_normal_(conv.weight[expert], mode="fan_out", nonlinearity="relu")
        return conv


class DepthwiseSeparableBlock(_MobileBlock):
    """MobileNetV1 block: depthwise kxk conv + norm + act, then pointwise 1x1 conv + norm + act."""

    def __init__(
        self, in_channels, out_channels, *, stride=1, kernel=3, activation="relu", **kwargs
    ):
        super().__init__(in_channels, out_channels, stride, **kwargs)
        self.depthwise = self._conv(
            in_channels,
            in_channels,
            kernel,
            stride=stride,
            groups=in_channels,
            activation=_activation(activation),
        )
        self.pointwise = self._conv(
            in_channels, out_channels, 1, activation=_activation(activation)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.router(x) if self.router is not None else None
        return self.pointwise(self.depthwise(x, r), r)


class InvertedResidualBlock(_MobileBlock):
    """MobileNetV2 / EfficientNet (MBConv) block: optional 1x1 expansion, depthwise kxk,
    optional squeeze-excitation, linear 1x1 projection, identity shortcut when shapes allow."""

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        stride=1,
        kernel=3,
        expand=6,
        se=0.0,
        activation="relu6",
        residual=True,
        drop_path=0.0,
        **kwargs,
    ):
        super().__init__(in_channels, out_channels, stride, **kwargs)
        hidden = in_channels * expand
        self.expand = None
        if expand != 1:
            self.expand = self._conv(in_channels, hidden, 1, activation=_activation(activation))
        self.depthwise = self._conv(
            hidden, hidden, kernel, stride=stride, groups=hidden, activation=_activation(activation)
        )
        self.se = None
        if se > 0:
            self.se = SqueezeExcitation(hidden, max(1, int(in_channels * se)), activation)
        self.project = self._conv(hidden, out_channels, 1)
        self.use_residual = residual and stride == 1 and in_channels == out_channels
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.router(x) if self.router is not None else None
        out = x
        if self.expand is not None:
            out = self.expand(out, r)
        out = self.depthwise(out, r)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out, r)
        if self.use_residual:
            out = x + _drop_path(out, self.drop_path, self.training)
        return out


class MobileNet(Backbone):
    """A MobileNet-family backbone (or its CondConv version) from an architecture table.

    Args:
        arch: a name in :data:`ARCHS` or a :class:`MobileNetArch`.
        in_channels: input channels.
        width_mult: multiplier on every layer's channels.
        depth_mult: multiplier on every stage's number of blocks, rounded up (EfficientNet's
            depth coefficient: B1 is B0 with 1.1, also available as "efficientnet_b1").
        num_experts: experts of the CondConv stages; None keeps the table's; 0 gives the static
            twin.
        condconv_stages: indices of the table rows that use CondConv; None keeps the table's.
        routing: "block" (one router per block) or "layer" (one per conv).
        routing_activation, routing_temperature, routing_dropout: see :class:`CondConvRouter`.
        norm: detectron2 norm name or callable (``get_norm``).
        bn_eps: epsilon of every norm layer; None keeps the table's (EfficientNet: TensorFlow's
            1e-3; timm's own EfficientNet-CondConv weights were trained with PyTorch's 1e-5).
        padding: one of :data:`PADDING_MODES`; "tf_same" for weights trained in TensorFlow.
        out_features: among "stem", "res2".."res5", "head". Stages after the last one asked
            for are not built.
        freeze_at: 0 freezes nothing, 1 the stem level, 2 also res2, and so on (as ResNet's).
        drop_path_rate: stochastic-depth rate of the last residual block (linear in depth).
        router_init: None keeps each router's own (Glorot) initialisation; "glorot" or "zeros"
            re-initialises every router once the backbone is built (``MODEL.CONDCONV.ROUTER_INIT``,
            see :func:`~condconv_det.layers.reset_routers`).
        condconv_options: keyword arguments of :func:`~condconv_det.layers.configure_condconv`
            (CondConv's training options: static kernel, router design, ...) applied once built;
            None: none. The YAML builders pass ``condconv_options(cfg)``.
    """

    def __init__(
        self,
        arch: Union[str, MobileNetArch] = "mobilenet_v2",
        *,
        in_channels: int = 3,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        num_experts: Optional[int] = None,
        condconv_stages: Optional[Sequence[int]] = None,
        routing: str = "block",
        routing_activation: str = "sigmoid",
        routing_temperature: float = 1.0,
        routing_dropout: float = 0.0,
        norm="BN",
        bn_eps: Optional[float] = None,
        padding: str = "symmetric",
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        freeze_at: int = 0,
        drop_path_rate: float = 0.0,
        router_init: Optional[str] = None,
        condconv_options: Optional[dict] = None,
    ):
        super().__init__()
        arch = _resolve_arch(arch)
        self.arch = arch
        rows = list(arch.stages)
        if condconv_stages is not None:
            bad = [i for i in condconv_stages if not 0 <= i < len(rows)]
            if bad:
                raise ValueError(
                    f"condconv_stages {list(bad)} out of range: the table has {len(rows)} rows"
                )
        if num_experts is not None and num_experts < 0:
            raise ValueError(f"num_experts must be >= 0, got {num_experts}")
        blocks = _decode_blocks(arch, depth_mult)
        if bn_eps is not None and not bn_eps > 0:
            raise ValueError(f"bn_eps must be > 0 (or None: the table's), got {bn_eps}")
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        check_router_init(router_init)
        bn_eps = arch.bn_eps if bn_eps is None else bn_eps
        valid = list(FEATURE_STRIDES) + (["head"] if arch.head_channels else [])
        unknown = [f for f in out_features if f not in valid]
        if not out_features or unknown:
            raise ValueError(
                f"out_features must be a non-empty subset of {valid}, got {list(out_features)}"
            )

        def experts_of(index: int, row: StageSpec) -> int:
            on = row.experts > 0 if condconv_stages is None else index in condconv_stages
            if not on:
                return 0
            return row.experts if num_experts is None else num_experts

        router_kwargs = dict(
            activation=routing_activation, temperature=routing_temperature, dropout=routing_dropout
        )
        levels = list(FEATURE_STRIDES)  # stem, res2..res5
        wanted = max(levels.index(f) if f in levels else len(levels) - 1 for f in out_features)
        build_head = "head" in out_features

        stem_channels = make_divisible(arch.stem_channels * width_mult)
        stem_norm = _norm(norm, stem_channels, bn_eps)
        tf_same = padding == "tf_same"
        stem = (_TFSameConv2d if tf_same else Conv2d)(
            in_channels,
            stem_channels,
            3,
            stride=2,
            padding=0 if tf_same else 1,
            bias=False,
            norm=stem_norm,
            activation=_activation(arch.activation),
        )
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
        level_blocks: List[List[nn.Module]] = [[stem]] + [[] for _ in levels[1:]]

        total_blocks = sum(block.row.block == "ir" for block in blocks)
        block_index, channels = 0, stem_channels
        for spec in blocks:
            if spec.level > wanted:
                continue  # beyond the last requested level: not built
            row = spec.row
            out_channels = make_divisible(row.channels * width_mult)
            common = dict(
                stride=spec.stride,
                kernel=row.kernel,
                activation=arch.activation,
                num_experts=experts_of(spec.row_index, row),
                norm=norm,
                bn_eps=bn_eps,
                routing=routing,
                router_kwargs=router_kwargs,
                padding=padding,
            )
            if row.block == "ds":
                block = DepthwiseSeparableBlock(channels, out_channels, **common)
            else:
                block = InvertedResidualBlock(
                    channels,
                    out_channels,
                    expand=row.expand,
                    se=row.se,
                    residual=arch.residual,
                    drop_path=drop_path_rate * block_index / max(1, total_blocks - 1),
                    **common,
                )
                block_index += 1
            level_blocks[spec.level].append(block)
            channels = out_channels

        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        self.stage_names: List[str] = []
        channels = stem_channels
        for level, name in enumerate(levels[: wanted + 1]):
            blocks = level_blocks[level]
            if not blocks:
                raise ValueError(
                    f"the architecture has no block at stride {FEATURE_STRIDES[name]} ({name})"
                )
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            channels = blocks[-1].out_channels
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = FEATURE_STRIDES[name]
        self.head = None
        if build_head:
            head_channels = make_divisible(arch.head_channels * max(1.0, width_mult))
            head_norm = _norm(norm, head_channels, bn_eps)
            self.head = Conv2d(
                channels,
                head_channels,
                1,
                bias=False,
                norm=head_norm,
                activation=_activation(arch.activation),
            )
            nn.init.kaiming_normal_(self.head.weight, mode="fan_out", nonlinearity="relu")
            self._out_feature_channels["head"] = head_channels
            self._out_feature_strides["head"] = 32
        self._out_features = list(out_features)
        set_up_routers(self, router_init, condconv_options)
        self.freeze(freeze_at)  # last: parameters the options add are frozen too

    def block_names(self) -> List[str]:
        """Module names of the built blocks, in order (``stem.1``, ..., ``res2.0``, ...), without
        the stem conv (``stem.0``) and the head; :func:`mobilenet_block_names` names those of
        the levels this backbone does not build too."""
        names = [f"stem.{i}" for i in range(1, len(self.stem))]
        for stage in self.stage_names[1:]:
            names += [f"{stage}.{i}" for i in range(len(getattr(self, stage)))]
        return names

    @staticmethod
    def has_head(arch: Union[str, MobileNetArch]) -> bool:
        """Whether the architecture has a final 1x1 conv (the "head" feature)."""
        return bool((ARCHS[arch] if isinstance(arch, str) else arch).head_channels)

    @property
    def size_divisibility(self) -> int:
        return 32

    def freeze(self, freeze_at: int = 0) -> "MobileNet":
        """Freezes the first ``freeze_at`` levels (stem = 1, res2 = 2, ...): no gradients, and
        batch norms become FrozenBatchNorm2d, as detectron2's ResNet.freeze does."""
        for name in self.stage_names[:freeze_at]:
            for block in getattr(self, name):
                if isinstance(block, CNNBlockBase):
                    block.freeze()
                else:  # the stem conv
                    for p in block.parameters():
                        p.requires_grad = False
                    FrozenBatchNorm2d.convert_frozen_batchnorm(block)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, C, H, W).

        Returns:
            dict of the requested features, each (N, C_f, H / stride_f, W / stride_f).
        """
        if x.dim() != 4:
            raise ValueError(f"MobileNet takes (N, C, H, W) input, got shape {list(x.shape)}")
        outputs: Dict[str, torch.Tensor] = {}
        # The levels are iterated as children (in the order they were added), not looked up by
        # name, which TorchScript cannot do, so that they keep their names ("stem", "res2", ...)
        # in the state dict. The head, the other child, is skipped here.
        for name, stage in self.named_children():
            if name in self.stage_names:
                x = stage(x)
                if name in self._out_features:
                    outputs[name] = x
        if self.head is not None:
            outputs["head"] = self.head(x)
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_condconv_mobilenet_backbone(cfg, input_shape: ShapeSpec) -> MobileNet:
    """MobileNet-family backbone from ``MODEL.MOBILENET.*`` and ``MODEL.CONDCONV.*``."""
    check_config(cfg, check_condconv_config)
    m, c = cfg.MODEL.MOBILENET, cfg.MODEL.CONDCONV
    if m.ARCH not in ARCHS:
        raise ValueError(f"MODEL.MOBILENET.ARCH must be one of {sorted(ARCHS)}, got {m.ARCH!r}")
    rows = len(ARCHS[m.ARCH].stages)
    if any(not 0 <= i < rows for i in m.CONDCONV_STAGES):
        raise ValueError(
            f"MODEL.MOBILENET.CONDCONV_STAGES must hold row indices in [0, {rows}) for "
            f"{m.ARCH}, got {list(m.CONDCONV_STAGES)}"
        )
    valid = list(FEATURE_STRIDES) + (["head"] if ARCHS[m.ARCH].head_channels else [])
    if not m.OUT_FEATURES or any(f not in valid for f in m.OUT_FEATURES):
        raise ValueError(
            f"MODEL.MOBILENET.OUT_FEATURES must be a non-empty subset of {valid}, "
            f"got {list(m.OUT_FEATURES)}"
        )
    return MobileNet(
        m.ARCH,
        in_channels=input_shape.channels,
        width_mult=m.WIDTH_MULT,
        depth_mult=m.DEPTH_MULT,
        num_experts=c.NUM_EXPERTS,
        condconv_stages=list(m.CONDCONV_STAGES) or None,
        routing=c.ROUTING,
        routing_activation=c.ROUTING_ACTIVATION,
        routing_temperature=c.ROUTING_TEMPERATURE,
        routing_dropout=c.ROUTING_DROPOUT,
        norm=m.NORM,
        bn_eps=m.BN_EPS,
        padding=m.PADDING,
        out_features=m.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        drop_path_rate=m.DROP_PATH_RATE,
        router_init=c.ROUTER_INIT,
        condconv_options=condconv_options(cfg),
    )

"""Convs of the detectron2 models shared by backbones and heads: which routing a block's
CondConvs use, and the conv + norm + ReLU6 of SSD's extra layers and predictors."""

from typing import Optional

from detectron2.layers import Conv2d, get_norm
from fvcore.nn import weight_init
from torch import nn

from condconv_det.layers import CondConv2dNorm, CondConvRouter, msra_fill_experts

__all__ = ["ROUTING_SCOPES", "make_ssd_conv"]

# "block": one router per block, computed from the block's input and fed to each of the block's
#     CondConvs (the official EfficientNet-CondConv code and timm).
# "layer": every CondConv routes from its own input (the paper's "independent" routing).
ROUTING_SCOPES = ("block", "layer")


def make_ssd_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    norm="",
    activation: bool = True,
    num_experts: int = 0,
    router_kwargs: Optional[dict] = None,
) -> nn.Module:
    """A conv + norm + ReLU6 of SSD's extra layers and heads, static or CondConv.

    ReLU6 is the activation of the TF API's SSD-MobileNet and of SSDLite. With ``num_experts``
    > 0 the conv is a :class:`CondConv2dNorm` with a router of its own (it has no block to share
    one with). Either way the module is called as ``conv(x)``.

    Args:
        in_channels, out_channels, kernel_size, stride, groups: as ``nn.Conv2d``'s; padding is
            ``kernel_size // 2``.
        norm: a ``get_norm`` name or callable; "" for none, and then the conv has a bias.
        activation: whether ReLU6 follows.
        num_experts: CondConv experts; 0 gives a detectron2 ``Conv2d``.
        router_kwargs: keyword arguments of :class:`CondConvRouter` (activation, temperature,
            dropout).

    Returns:
        the module, He-initialised (every expert on its own) with zero bias.
    """
    norm_module = get_norm(norm, out_channels)
    common = dict(
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=norm_module is None,
    )
    act = nn.ReLU6(inplace=True) if activation else None
    if num_experts == 0:
        conv = Conv2d(
            in_channels, out_channels, kernel_size, norm=norm_module, activation=act, **common
        )
        weight_init.c2_msra_fill(conv)
        return conv
    router = CondConvRouter(in_channels, num_experts, **(router_kwargs or {}))
    conv = CondConv2dNorm(
        in_channels,
        out_channels,
        kernel_size,
        num_experts=num_experts,
        norm=norm_module,
        activation=act,
        router=router,
        **common,
    )
    return msra_fill_experts(conv)

"""CondConv layers: pure PyTorch, importable without detectron2."""

from .condconv import CONDCONV_PATHS, CondConv2d, cond_conv2d
from .condconv_norm import CondConv2dNorm, msra_fill_experts
from .expert_storage import EXPERT_DTYPES, store_experts_in
from .routing import (
    EXPERT_INITS,
    ROUTER_INITS,
    ROUTER_NORMS,
    ROUTING_ACTIVATIONS,
    CondConvRouter,
    RoutedCondConv2d,
    check_router_init,
    configure_condconv,
    reset_routers,
    set_routing_temperature,
    set_up_routers,
    shared_expert_weights,
    uniform_start,
)

__all__ = [
    "CONDCONV_PATHS",
    "EXPERT_DTYPES",
    "EXPERT_INITS",
    "ROUTER_INITS",
    "ROUTER_NORMS",
    "ROUTING_ACTIVATIONS",
    "CondConv2d",
    "CondConv2dNorm",
    "CondConvRouter",
    "RoutedCondConv2d",
    "check_router_init",
    "cond_conv2d",
    "configure_condconv",
    "msra_fill_experts",
    "reset_routers",
    "set_routing_temperature",
    "set_up_routers",
    "shared_expert_weights",
    "store_experts_in",
    "uniform_start",
]

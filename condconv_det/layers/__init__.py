"""CondConv layers: pure PyTorch, importable without detectron2."""
from .condconv import CONDCONV_PATHS, CondConv2d, cond_conv2d
from .routing import (
    ROUTER_INITS,
    ROUTING_ACTIVATIONS,
    CondConvRouter,
    RoutedCondConv2d,
    check_router_init,
    reset_routers,
)

__all__ = [
    "CONDCONV_PATHS",
    "ROUTER_INITS",
    "ROUTING_ACTIVATIONS",
    "CondConv2d",
    "CondConvRouter",
    "RoutedCondConv2d",
    "check_router_init",
    "cond_conv2d",
    "reset_routers",
]

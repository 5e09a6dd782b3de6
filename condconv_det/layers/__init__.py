"""CondConv layers: pure PyTorch, importable without detectron2."""
from .condconv import CONDCONV_PATHS, CondConv2d, cond_conv2d
from .routing import ROUTING_ACTIVATIONS, CondConvRouter, RoutedCondConv2d

__all__ = [
    "CONDCONV_PATHS",
    "ROUTING_ACTIVATIONS",
    "CondConv2d",
    "CondConvRouter",
    "RoutedCondConv2d",
    "cond_conv2d",
]

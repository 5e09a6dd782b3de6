"""Detectron2 modeling parts of condconv_det (needs detectron2)."""
from . import backbone  # noqa: F401  (registers the backbones)
from .conv import CondConv2dNorm

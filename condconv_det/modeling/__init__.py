"""Detectron2 modeling parts of condconv_det (needs detectron2)."""

from . import backbone, meta_arch  # noqa: F401  (registers the backbones and SSD)

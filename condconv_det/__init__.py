"""condconv_det: CondConv (Yang et al., NeurIPS 2019) for Detectron2.

``import condconv_det`` registers the backbones (and, later, detectors) with detectron2's
registries and exposes ``add_condconv_config``. The layers in ``condconv_det.layers`` are plain
PyTorch and import without detectron2.
"""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # the layers still work; the detectron2 parts explain what is missing
    _DETECTRON2_ERROR = e
else:
    _DETECTRON2_ERROR = None

if _DETECTRON2_ERROR is None:
    from . import modeling  # noqa: F401  (registration)
    from .config import add_condconv_config

    __all__ = ["add_condconv_config"]
else:

    def add_condconv_config(cfg):
        raise ImportError(
            "condconv_det.add_condconv_config needs detectron2, which failed to import "
            f"({_DETECTRON2_ERROR}). Install it: see README.md ('make env')."
        )

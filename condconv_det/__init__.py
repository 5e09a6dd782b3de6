"""condconv_det: CondConv (Yang et al., NeurIPS 2019) for Detectron2.

``import condconv_det`` registers the backbones, the SSD detector and the bundled datasets with
detectron2's registries and exposes ``add_condconv_config`` and ``get_cfg``. The layers in
``condconv_det.layers`` are plain PyTorch and import without detectron2.
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # the layers still work; the detectron2 parts explain what is missing
    _DETECTRON2_ERROR = e
else:
    _DETECTRON2_ERROR = None

if _DETECTRON2_ERROR is None:
    from . import data, modeling  # noqa: F401  (registration)
    from .config import add_condconv_config, get_cfg

    __all__ = ["add_condconv_config", "get_cfg"]
else:

    def add_condconv_config(cfg):
        raise ImportError(
            "condconv_det.add_condconv_config needs detectron2, which failed to import "
            f"({_DETECTRON2_ERROR}). Install it: see README.md ('make env')."
        )

    def get_cfg():
        add_condconv_config(None)

"""What the config says about a model built for inference (evaluation, the demo, export)."""

import logging

from detectron2.config import CfgNode as CN
from torch import nn

from condconv_det.layers import CondConv2d, store_experts_in

from .checks import check_condconv_config, check_config

__all__ = ["store_experts_for_inference"]

logger = logging.getLogger(__name__)


def store_experts_for_inference(model: nn.Module, cfg: CN) -> nn.Module:
    """Stores ``model``'s CondConv experts in ``MODEL.CONDCONV.EXPERT_DTYPE``
    (:func:`condconv_det.layers.store_experts_in`), in place, once its weights are loaded;
    returns ``model``. The default, "float32", leaves the model as it is.

    Raises:
        ValueError: a value of ``MODEL.CONDCONV.EXPERT_DTYPE`` that is not allowed, or a model
            in training mode with "bfloat16" or "int8" (the key is for inference only).
    """
    check_config(cfg, check_condconv_config)
    dtype = cfg.MODEL.CONDCONV.EXPERT_DTYPE
    if dtype == "float32":
        return model
    if model.training:
        raise ValueError(
            f"MODEL.CONDCONV.EXPERT_DTYPE {dtype!r} is for inference only; the model is in "
            "training mode (train with 'float32')"
        )
    store_experts_in(model, dtype)
    layers = [m for m in model.modules() if isinstance(m, CondConv2d)]
    logger.info(f"Experts of {len(layers)} CondConv layers stored in {dtype} for inference.")
    return model

"""Storing CondConv experts in bfloat16 for inference.

At batch 1 a CondConv layer's time goes to reading its ``E`` experts once to mix the example's
kernel (docs/performance.md): experts stored in bfloat16 halve those bytes. The kernels are still
mixed into float32 (float32 routing, float32 accumulation) and convolved in float32, so the only
rounding is that of the stored experts.
"""

from typing import Dict, Union

import torch
from torch import nn

from .condconv import CondConv2d

__all__ = ["EXPERT_DTYPES", "store_experts_in"]

# The dtypes experts can be stored in, by the names the config uses (MODEL.CONDCONV.EXPERT_DTYPE).
EXPERT_DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def store_experts_in(module: nn.Module, dtype: Union[torch.dtype, str]) -> nn.Module:
    """Stores the experts (``weight``) and static kernels (``static_weight``) of every
    :class:`CondConv2d` inside ``module`` in ``dtype``, in place; returns ``module``.

    bfloat16 is for inference only: the module must be in eval mode, and a converted layer
    refuses to run in training mode (``CondConv2d.reduced_precision_experts``). Biases, routers
    and every other parameter stay float32. ``torch.float32`` converts back (the rounding to
    bfloat16 stays). A converted model's ``state_dict`` holds the bfloat16 experts: save the
    float32 checkpoint instead (loading it into a converted model rounds it again, as
    converting does).

    Args:
        module: a float32 model or layer.
        dtype: ``torch.float32`` or ``torch.bfloat16``, or its name (:data:`EXPERT_DTYPES`).

    Raises:
        ValueError: another dtype, or experts that are neither float32 nor bfloat16.
        RuntimeError: bfloat16 asked for a module in training mode.
    """
    if isinstance(dtype, str):
        if dtype not in EXPERT_DTYPES:
            raise ValueError(f"expert dtype must be one of {tuple(EXPERT_DTYPES)}, got {dtype!r}")
        dtype = EXPERT_DTYPES[dtype]
    if dtype not in EXPERT_DTYPES.values():
        raise ValueError(
            f"expert dtype must be torch.float32 or torch.bfloat16, got {dtype!r} "
            "(store_experts_in)"
        )
    layers = [m for m in module.modules() if isinstance(m, CondConv2d)]
    reduced = dtype != torch.float32
    if reduced and any(m.training for m in layers):
        raise RuntimeError(
            "store_experts_in: experts in bfloat16 are for inference only, and the module is in "
            "training mode; call module.eval() first"
        )
    for layer in layers:
        for name in ("weight", "static_weight"):
            param = getattr(layer, name)
            if param is None:
                continue
            if param.dtype not in EXPERT_DTYPES.values():
                raise ValueError(
                    f"store_experts_in: {name} of {layer.__class__.__name__} is {param.dtype}; "
                    "only float32 experts can be stored in bfloat16"
                )
            if param.dtype != dtype:
                converted = param.detach().to(dtype)
                setattr(layer, name, nn.Parameter(converted, param.requires_grad))
        layer.reduced_precision_experts = reduced
    return module

"""Storing CondConv experts in bfloat16 or int8 for inference.

At batch 1 a CondConv layer's time goes to reading its ``E`` experts once to mix the example's
kernel (docs/performance.md): experts stored in bfloat16 halve those bytes, int8 quarters them.
The kernels are still mixed into float32 (float32 routing, float32 accumulation) and convolved in
float32, so the only rounding is that of the stored experts.

int8 experts are symmetric, with one float32 scale per output channel shared by all the experts
of a layer (``CondConv2d.weight_scale``): ``W_i[c] = s[c] * q_i[c]``. A shared scale keeps the mix
one product of the int8 experts, ``sum_i r_i q_i``, and the scales apply to the mixed kernel or to
the convolution's output, whichever is smaller. A static kernel has scales of its own
(``static_weight_scale``).
"""

from typing import Dict, List, Tuple, Union

import torch
from torch import nn

from .condconv import CondConv2d

__all__ = [
    "EXPERT_DTYPES",
    "quantize_rows_int8",
    "quantize_per_channel_int8",
    "dequantize_per_channel",
    "convert_saved_experts",
    "store_experts_in",
]

# The dtypes experts can be stored in, by the names the config uses (MODEL.CONDCONV.EXPERT_DTYPE).
EXPERT_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
}


def quantize_rows_int8(values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``values`` (R, P) as int8 with one float32 scale per row: ``values ~ scales * q``.

    Symmetric, to the nearest step: row ``r``'s largest magnitude maps to 127. A row of zeros
    gets scale 1 (its values stay 0).

    Returns:
        ``q`` (R, P) int8 and ``scales`` (R, 1) float32.
    """
    values = values.detach().float()
    scales = values.abs().amax(dim=1, keepdim=True) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(values / scales).clamp_(-127, 127).to(torch.int8)
    return q, scales


def quantize_per_channel_int8(
    weight: torch.Tensor, experts: bool = True
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A layer's experts (E, O, ...) as int8 with one scale per output channel shared by the
    experts (``experts=False``: a static kernel (O, ...), one scale per output channel).

    Returns:
        ``q`` of ``weight``'s shape, int8, and the scales (O,) float32.
    """
    values = weight.detach().float()
    rows = values.transpose(0, 1) if experts else values  # output channel first
    q, scales = quantize_rows_int8(rows.reshape(rows.shape[0], -1))
    q = q.reshape(rows.shape)
    return (q.transpose(0, 1) if experts else q).contiguous(), scales.reshape(-1)


def dequantize_per_channel(
    q: torch.Tensor, scales: torch.Tensor, experts: bool = True
) -> torch.Tensor:
    """The float32 experts (or static kernel, ``experts=False``) that ``q`` and ``scales``
    (:func:`quantize_per_channel_int8`) stand for."""
    shape = [1] * q.dim()
    shape[1 if experts else 0] = -1
    return q.float() * scales.reshape(shape)


# The expert tensors of a layer: (parameter, its scale buffer, whether it has an expert dim).
_STORED = (("weight", "weight_scale", True), ("static_weight", "static_weight_scale", False))


def _dtype_of(dtype: Union[torch.dtype, str]) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in EXPERT_DTYPES:
            raise ValueError(f"expert dtype must be one of {tuple(EXPERT_DTYPES)}, got {dtype!r}")
        return EXPERT_DTYPES[dtype]
    if dtype not in EXPERT_DTYPES.values():
        raise ValueError(
            f"expert dtype must be torch.float32, torch.bfloat16 or torch.int8, got {dtype!r} "
            "(store_experts_in)"
        )
    return dtype


def store_experts_in(module: nn.Module, dtype: Union[torch.dtype, str]) -> nn.Module:
    """Stores the experts (``weight``) and static kernels (``static_weight``) of every
    :class:`CondConv2d` inside ``module`` in ``dtype``, in place; returns ``module``.

    bfloat16 and int8 are for inference only: the module must be in eval mode, and a converted
    layer refuses to run in training mode (``CondConv2d.reduced_precision_experts``). int8
    experts get one scale per output channel shared by the experts (``weight_scale``; a static
    kernel its own, ``static_weight_scale``). Biases, routers and every other parameter stay
    float32. ``torch.float32`` converts back (the rounding stays), and any stored dtype converts
    to any other through float32. A converted model's ``state_dict`` holds the converted experts
    (and the int8 scales); loading a float32 checkpoint into a converted model converts it as
    this function does, and an int8 one into a float32 model dequantizes it.

    Args:
        module: a model or layer.
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.int8``, or its name
            (:data:`EXPERT_DTYPES`).

    Raises:
        ValueError: another dtype, or experts in a dtype other than these.
        RuntimeError: bfloat16 or int8 asked for a module in training mode.
    """
    dtype = _dtype_of(dtype)
    layers = [m for m in module.modules() if isinstance(m, CondConv2d)]
    reduced = dtype != torch.float32
    if reduced and any(m.training for m in layers):
        raise RuntimeError(
            f"store_experts_in: experts in {str(dtype).replace('torch.', '')} are for inference "
            "only, and the module is in training mode; call module.eval() first"
        )
    for layer in layers:
        for name, _, _ in _STORED:
            param = getattr(layer, name)
            if param is not None and param.dtype not in EXPERT_DTYPES.values():
                raise ValueError(
                    f"store_experts_in: {name} of {layer.__class__.__name__} is {param.dtype}; "
                    "only float32, bfloat16 or int8 experts can be converted"
                )
    for layer in layers:
        for name, scale_name, experts in _STORED:
            param = getattr(layer, name)
            if param is None or param.dtype == dtype:
                continue
            values = param.detach()
            scale = getattr(layer, scale_name)
            if scale is not None:
                values = dequantize_per_channel(values, scale, experts)
            if dtype == torch.int8:
                q, scale = quantize_per_channel_int8(values, experts)
                setattr(layer, name, nn.Parameter(q, requires_grad=False))
                setattr(layer, scale_name, scale)
            else:
                # int8 parameters cannot require a gradient: back from int8 they train again.
                trainable = param.requires_grad or param.dtype == torch.int8
                setattr(layer, name, nn.Parameter(values.to(dtype), trainable))
                setattr(layer, scale_name, None)
        layer.reduced_precision_experts = reduced
    return module


def convert_saved_experts(
    layer: CondConv2d, state_dict: Dict[str, torch.Tensor], prefix: str, error_msgs: List[str]
) -> None:
    """Makes the experts that ``state_dict`` holds for ``layer`` (under ``prefix``) match the
    layer's store, in place, before they are loaded: float32 or bfloat16 experts loaded into an
    int8 layer are quantized as :func:`store_experts_in` quantizes them, int8 experts (with
    their scales) loaded into a float32 or bfloat16 layer are dequantized. Int8 experts saved
    without their scales are an error (appended to ``error_msgs``): their values alone are not
    the experts."""
    for name, scale_name, experts in _STORED:
        key, scale_key = prefix + name, prefix + scale_name
        param = getattr(layer, name)
        saved = state_dict.get(key)
        if param is None or not isinstance(saved, torch.Tensor):
            continue
        saved_scale = state_dict.get(scale_key)
        if saved.dtype == torch.int8 and saved_scale is None:
            error_msgs.append(
                f"{key} holds int8 experts without their scales ({scale_key}); save the whole "
                "state_dict of the converted model, or the float32 one"
            )
        elif saved_scale is not None and param.dtype != torch.int8:
            state_dict[key] = dequantize_per_channel(saved, saved_scale, experts)
            del state_dict[scale_key]
        elif saved_scale is None and param.dtype == torch.int8 and saved.shape == param.shape:
            # (A saved tensor of another shape is left to the load's own shape error.)
            state_dict[key], state_dict[scale_key] = quantize_per_channel_int8(saved, experts)

"""Floors: the least time a CondConv layer or model can take, so that its time can be judged
against what the machine allows and not only against its static twin.

A CondConv network does the work of its static twin (every convolution, with a mixed kernel of
the static kernel's size) and, on top, moves its expert weights. Mixing the kernels is a
matrix-vector product at batch 1, 0.5 multiply-adds per byte read, so it is bound by memory
bandwidth, not by arithmetic. A floor is therefore the static twin's measured time plus the
experts' bytes moved over the read bandwidth measured in the same run (:func:`read_bandwidth`).
Its ratio to the CondConv time hardly depends on the host: a machine with faster memory or
faster convolutions lowers both.
"""

import torch
from torch import nn

from .timing import round_robin_times

__all__ = [
    "EVAL_EXPERT_PASSES",
    "TRAIN_EXPERT_PASSES",
    "expert_bytes",
    "floor_seconds",
    "read_bandwidth",
]

# Times the experts' bytes that one inference call moves beyond its static twin: the mix reads
# every expert once per call, whatever the batch (the B routing vectors meet each expert once).
EVAL_EXPERT_PASSES = 1
# Times the experts' bytes that one training step with SGD and momentum moves beyond its static
# twin: the forward mix reads them (1); the backward writes their gradient (1); the optimizer
# reads weight, gradient and momentum (3) and writes weight and momentum (2), weight decay
# folded into the same pass. Writes are counted at the read bandwidth, and the static twin's own
# kernels of the converted layers (1/E of the experts, whose optimizer traffic the CondConv twin
# does not have) are not subtracted: both are small next to the rest, and the first errs low.
TRAIN_EXPERT_PASSES = 1 + 1 + 3 + 2


def read_bandwidth(device: torch.device, min_time: float) -> float:
    """Bytes per second for reading a buffer far larger than the caches (a reduction over it)."""
    buf = torch.ones(64 * 1024 * 1024, device=device)  # 256 MiB of float32
    seconds = round_robin_times({"read": lambda: buf.sum()}, device, min_time, 3)["read"]
    return buf.numel() * buf.element_size() / seconds


def expert_bytes(model: nn.Module) -> int:
    """Bytes of the expert weights and biases of every CondConv layer in ``model``, each tensor
    once (:func:`condconv_det.analysis.expert_parameters`), with the scales of int8 experts
    (``store_experts_in``); 0 for a static model."""
    # Imported here: condconv_det.analysis imports fvcore, which the layer benchmark never needs.
    from condconv_det.analysis import expert_parameters
    from condconv_det.layers import CondConv2d

    tensors = {id(p): p for p in expert_parameters(model)}
    for layer in model.modules():
        if isinstance(layer, CondConv2d):
            for scale in (layer.weight_scale, layer.static_weight_scale):
                if scale is not None:
                    tensors[id(scale)] = scale
    return sum(t.numel() * t.element_size() for t in tensors.values())


def floor_seconds(static_seconds: float, bytes_moved: float, bandwidth: float) -> float:
    """The static twin's seconds plus the seconds to move ``bytes_moved`` at ``bandwidth``.

    Args:
        static_seconds: the static twin's (or static conv's) measured time for the same call.
        bytes_moved: the bytes that the CondConv call moves beyond its static twin.
        bandwidth: bytes per second, from :func:`read_bandwidth`.
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive bytes per second, got {bandwidth}")
    return static_seconds + bytes_moved / bandwidth

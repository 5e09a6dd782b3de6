"""How much the mixed kernel itself changes from image to image.

Routing that varies need not mean kernels that vary: upcycled experts start as near copies of
one kernel, so any routing mixes nearly the same kernel, and a static kernel beside small
experts dwarfs whatever they add. What a CondConv layer computes differently per image is the
kernel ``K(x) = S + sum_i r_i(x) W_i`` (``S`` the static kernel, if any), so this module
measures its spread over images directly, from the routing weights and the experts, without
forming one kernel per image: with ``G = W W^T`` the experts' Gram matrix (E x E) and ``C`` the
covariance of the routing vectors over images, the mean squared distance of ``K(x)`` from the
mean kernel is ``trace(C G)``.

Only torch and numpy.
"""

from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from condconv_det.layers import CondConv2d

from .recorder import _layer_name, find_routers

__all__ = ["KernelSpread", "RoutedKernel", "kernel_spread", "routed_kernels"]


class RoutedKernel(NamedTuple):
    """One CondConv conv's kernels, flattened, in float64: ``experts`` (E, D) and the static
    kernel ``static`` (D,) or None."""

    experts: np.ndarray
    static: Optional[np.ndarray]


class KernelSpread(NamedTuple):
    """The spread of a router's mixed kernels over images.

    Attributes:
        relative_std: the root-mean-square distance of a per-image kernel from the mean kernel,
            over the mean kernel's norm (both summed over the convs the router drives): 0 when
            every image gets the same kernel, as in a static model.
        class_share: the part of that spread (of its square) that the class means explain; 0
            when the spread is 0.
    """

    relative_std: float
    class_share: float


def routed_kernels(model: nn.Module) -> Dict[str, List[RoutedKernel]]:
    """The kernels of every :class:`~condconv_det.layers.CondConv2d` of ``model``, under the
    name of the router that drives them (the names of :class:`.RoutingRecorder`).

    A conv belongs to the router of the innermost module that holds both (a block's router
    drives the block's convs, a conv's own router that conv). Experts stored in bfloat16 are
    read in float64 too.

    Returns:
        {layer: [RoutedKernel, ...]}, one entry per router (registration order); a router that
        drives no CondConv2d has an empty list.
    """
    layers = list(find_routers(model))
    kernels: Dict[str, List[RoutedKernel]] = {layer: [] for layer in layers}
    for path, module in model.named_modules():
        if not isinstance(module, CondConv2d):
            continue
        path = _layer_name(path)  # only the DDP prefix can go: a conv's path has no ".router"
        owners = [
            layer
            for layer in layers
            if layer == "router" or path == layer or path.startswith(layer + ".")
        ]
        if not owners:
            continue
        owner = max(owners, key=lambda layer: 0 if layer == "router" else len(layer))
        experts = module.weight.detach().to("cpu", torch.float64).flatten(1).numpy()
        static = module.static_weight
        if static is not None:
            static = static.detach().to("cpu", torch.float64).flatten().numpy()
        kernels[owner].append(RoutedKernel(experts, static))
    return kernels


def kernel_spread(
    weights: np.ndarray, kernels: List[RoutedKernel], member: Optional[np.ndarray] = None
) -> KernelSpread:
    """The spread over images of the kernels one router mixes (see :class:`KernelSpread`).

    Args:
        weights: (N, E) routing weights of N images.
        kernels: the convs the router drives (:func:`routed_kernels`).
        member: (N, C) bool, which images count for which class; None: no class share (0).

    Returns:
        a :class:`KernelSpread`; ``(nan, nan)`` when the router drives no conv.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if not kernels:
        return KernelSpread(float("nan"), float("nan"))
    num_experts = weights.shape[1]
    gram = np.zeros((num_experts, num_experts))
    mean_weights = weights.mean(axis=0)
    mean_norm2 = 0.0
    for experts, static in kernels:
        if experts.shape[0] != num_experts:
            raise ValueError(
                f"a conv with {experts.shape[0]} experts driven by routing over {num_experts}"
            )
        gram += experts @ experts.T
        mean_kernel = mean_weights @ experts
        if static is not None:
            mean_kernel = mean_kernel + static
        mean_norm2 += float(mean_kernel @ mean_kernel)
    centred = weights - mean_weights
    total = float(np.einsum("ne,ef,nf->", centred, gram, centred)) / len(weights)
    total = max(total, 0.0)
    relative_std = float(np.sqrt(total / mean_norm2)) if mean_norm2 > 0 else float("nan")
    share = 0.0
    if member is not None and total > 0:
        counts = member.sum(axis=0)
        present = counts > 0
        if present.any():
            member = member[:, present].astype(np.float64)
            class_means = (member.T @ weights) / counts[present, None]
            between = class_means - class_means.mean(axis=0)
            share = float(np.einsum("ce,ef,cf->", between, gram, between)) / len(between) / total
    return KernelSpread(relative_std, share)

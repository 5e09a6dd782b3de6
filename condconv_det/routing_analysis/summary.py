"""Routing statistics: how spread out routing vectors are (:func:`routing_entropy`) and
per-image routing reduced to per-class and per-layer statistics (:func:`summarize_routing`).

Only numpy and torch.
"""

from dataclasses import dataclass, field
from typing import Collection, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "RoutingAnalysisError",
    "RoutingSummary",
    "routing_entropy",
    "spread_over_depth",
    "summarize_routing",
]


class RoutingAnalysisError(ValueError):
    """Input the routing analysis cannot use (a dataset, a model without routers); the message
    says what is wrong and how to fix it."""


def routing_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each routing vector normalised to sum to one.

    Sigmoid routing weights need not sum to one (several experts can be fully on): the vector is
    normalised first, so the entropy measures how evenly the kernel mix spreads over experts,
    from 0 (one expert) to ``log E`` (all equal, e.g. all at 1 or all at 0.5).

    Args:
        weights: (B, E), non-negative.

    Returns:
        (B,), each in [0, log E]. An all-zero vector gets 0.
    """
    total = weights.sum(dim=1, keepdim=True)
    p = weights / total.clamp_min(torch.finfo(weights.dtype).tiny)
    return -torch.special.xlogy(p, p).sum(dim=1)


@dataclass
class RoutingSummary:
    """Routing statistics of a set of images, per layer (execution order = depth).

    Per-class statistics use every image whose annotations hold the class, once per image
    however many objects of the class it holds; an image with several classes counts for each,
    one without objects for none (it still counts in the overall statistics).

    Attributes:
        layers: layer names, by depth.
        class_names: the C class names.
        num_images: images summarised.
        class_counts: (C,) images holding each class.
        class_mean: {layer: (C, E)} mean routing weight per class and expert; NaN for a class
            without images.
        class_entropy: {layer: (C,)} mean over the class's images of :func:`routing_entropy`.
        overall_mean: {layer: (E,)} mean routing weight over all images.
        overall_entropy: {layer: float} mean entropy over all images.
        unused: {layer: (E,) bool} experts whose mean weight over all images is below the
            threshold.
        between_class_var: {layer: float} variance across classes (with images) of the class mean
            weights, averaged over experts: how much routing depends on the class.
        class_share: {layer: float} ``between_class_var`` over the variance across images,
            averaged over experts: the part of the routing's spread that goes with the class
            (0: class-agnostic; about 1: routing fixed by the class; it can exceed 1 on few
            images, since an image counts for each of its classes).
        kernel_spread: {layer: float} how far the per-image mixed kernels lie from their mean,
            relative to its norm (:class:`~condconv_det.routing_analysis.kernels.KernelSpread`);
            empty when the summary was made without the model's kernels.
        kernel_class_share: {layer: float} the part of the kernels' spread that the class
            explains; empty likewise.
    """

    layers: List[str]
    class_names: List[str]
    num_images: int
    class_counts: np.ndarray
    class_mean: Dict[str, np.ndarray]
    class_entropy: Dict[str, np.ndarray]
    overall_mean: Dict[str, np.ndarray]
    overall_entropy: Dict[str, float]
    unused: Dict[str, np.ndarray]
    between_class_var: Dict[str, float]
    class_share: Dict[str, float]
    kernel_spread: Dict[str, float] = field(default_factory=dict)
    kernel_class_share: Dict[str, float] = field(default_factory=dict)


def summarize_routing(
    routing: Mapping[str, np.ndarray],
    image_classes: Sequence[Collection[int]],
    class_names: Sequence[str],
    unused_threshold: float = 0.01,
    kernels: Optional[Mapping[str, Sequence]] = None,
) -> RoutingSummary:
    """Reduces per-image routing weights to the statistics of :class:`RoutingSummary`.

    Args:
        routing: {layer: (N, E_layer) routing weights of N images}, by depth.
        image_classes: N collections of the class indices (0..C-1) present in each image.
        class_names: the C class names.
        unused_threshold: an expert whose mean weight over all images is below it is unused.
        kernels: {layer: the kernels its router drives}
            (:func:`~condconv_det.routing_analysis.kernels.routed_kernels`); with them the
            summary holds the spread of the mixed kernels too.

    Returns:
        the summary.
    """
    num_classes = len(class_names)
    num_images = len(image_classes)
    if num_images == 0:
        raise ValueError("summarize_routing needs at least one image")
    # (N, C) membership: which images count for which class.
    member = np.zeros((num_images, num_classes), dtype=bool)
    for i, classes in enumerate(image_classes):
        for c in classes:
            if not 0 <= c < num_classes:
                raise ValueError(f"image {i}: class {c} outside 0..{num_classes - 1}")
            member[i, c] = True
    counts = member.sum(axis=0)
    summary = RoutingSummary(
        layers=list(routing),
        class_names=list(class_names),
        num_images=num_images,
        class_counts=counts,
        class_mean={},
        class_entropy={},
        overall_mean={},
        overall_entropy={},
        unused={},
        between_class_var={},
        class_share={},
    )
    present = counts > 0
    for layer, weights in routing.items():
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[0] != num_images:
            raise ValueError(
                f"layer {layer!r}: routing weights of shape {weights.shape}, expected "
                f"({num_images}, E)"
            )
        entropy = routing_entropy(torch.from_numpy(weights)).numpy()
        with np.errstate(invalid="ignore", divide="ignore"):  # classes without images: NaN
            class_mean = (member.T.astype(np.float64) @ weights) / counts[:, None]
            class_entropy = (member.T.astype(np.float64) @ entropy) / counts
        summary.class_mean[layer] = class_mean
        summary.class_entropy[layer] = class_entropy
        overall = weights.mean(axis=0)
        summary.overall_mean[layer] = overall
        summary.overall_entropy[layer] = float(entropy.mean())
        summary.unused[layer] = overall < unused_threshold
        between = class_mean[present].var(axis=0) if present.any() else np.zeros_like(overall)
        total = weights.var(axis=0)
        summary.between_class_var[layer] = float(between.mean())
        summary.class_share[layer] = float(
            np.mean(np.divide(between, total, out=np.zeros_like(total), where=total > 0))
        )
        if kernels is not None:
            from .kernels import kernel_spread  # it imports the layers; the rest needs none

            spread = kernel_spread(weights, list(kernels.get(layer, ())), member)
            summary.kernel_spread[layer] = spread.relative_std
            summary.kernel_class_share[layer] = spread.class_share
    return summary


def spread_over_depth(num_layers: int, count: int = 3) -> List[int]:
    """Indices of ``count`` of ``num_layers`` layers spread over depth (first, middle, last),
    without repeats."""
    if num_layers <= 0:
        return []
    if count <= 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})

"""What CondConv routers do: capture their routing weights and summarise them per class and depth.

The paper (Yang et al. 2019, sec. 5) finds routing that is nearly class-agnostic in early layers
and class-specific in deep ones. :class:`RoutingRecorder` captures the weights of every
:class:`~condconv_det.layers.CondConvRouter` of a model with forward hooks (one router per block
with "block" routing, one per conv with "layer" routing; either way each router runs once per
forward), :func:`routing_entropy` measures how spread out a routing vector is, and
:func:`summarize_routing` reduces per-image routing to per-class means, entropies and the
between-class variance that ``tools/analyze_routing.py`` writes and plots. The training hook
:class:`condconv_det.engine.hooks.RoutingStatsHook` uses the same recorder.

Only torch and numpy: no detectron2 import.
"""

from dataclasses import dataclass
from typing import Collection, Dict, List, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from condconv_det.layers import CondConvRouter

__all__ = [
    "RoutingRecorder",
    "RoutingSummary",
    "find_routers",
    "routing_entropy",
    "spread_over_depth",
    "summarize_routing",
]


def _layer_name(module_path: str) -> str:
    """The name a router's statistics go under: the module it routes (a block, or a conv with
    its own router), i.e. its path without the ``.router`` suffix and DDP's ``module.``."""
    if module_path.startswith("module."):
        module_path = module_path[len("module.") :]
    if module_path.endswith(".router"):
        module_path = module_path[: -len(".router")]
    return module_path or "router"


def find_routers(model: nn.Module) -> Dict[str, CondConvRouter]:
    """Every :class:`CondConvRouter` of ``model`` by layer name (see :class:`RoutingRecorder`), in
    registration order (not necessarily execution order)."""
    return {
        _layer_name(path): m for path, m in model.named_modules() if isinstance(m, CondConvRouter)
    }


class RoutingRecorder:
    """Captures the routing weights of every router of a model while attached.

    Layers are named by the module a router routes: ``backbone.bottom_up.res4.0`` for the router
    of block ``res4.0`` ("block" routing), ``...res4.0.pointwise`` for a conv's own router
    ("layer" routing), ``head.cls_score.0`` for an SSD predictor's. Nothing is hooked until
    :meth:`attach`, so a detached recorder costs nothing::

        recorder = RoutingRecorder(model)
        with recorder:             # attach ... detach
            model(batch)
        weights = recorder.pop()   # {layer: (B, E)}, in execution order

    Args:
        model: any module; a DDP-wrapped one is fine.
    """

    def __init__(self, model: nn.Module):
        self.routers = find_routers(model)
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        # Insertion order = order of the first call since the last pop: execution order, since
        # every router runs once per forward pass.
        self._records: Dict[str, List[torch.Tensor]] = {}

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "RoutingRecorder":
        """Adds one forward hook per router (idempotent)."""
        if not self._handles:
            for name, router in self.routers.items():
                self._handles.append(router.register_forward_hook(self._hook(name)))
        return self

    def detach(self) -> None:
        """Removes the hooks; what was recorded stays until :meth:`pop`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "RoutingRecorder":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            self._records.setdefault(name, []).append(output.detach())

        return hook

    def pop(self) -> Dict[str, torch.Tensor]:
        """Returns and forgets what was recorded.

        Returns:
            {layer: (B_total, E) routing weights}, in the order the routers first ran; calls of
            one router (several forward passes) are concatenated along the batch.
        """
        records, self._records = self._records, {}
        return {name: torch.cat(chunks) for name, chunks in records.items()}


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


def summarize_routing(
    routing: Mapping[str, np.ndarray],
    image_classes: Sequence[Collection[int]],
    class_names: Sequence[str],
    unused_threshold: float = 0.01,
) -> RoutingSummary:
    """Reduces per-image routing weights to the statistics of :class:`RoutingSummary`.

    Args:
        routing: {layer: (N, E_layer) routing weights of N images}, by depth.
        image_classes: N collections of the class indices (0..C-1) present in each image.
        class_names: the C class names.
        unused_threshold: an expert whose mean weight over all images is below it is unused.

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
    return summary


def spread_over_depth(num_layers: int, count: int = 3) -> List[int]:
    """Indices of ``count`` of ``num_layers`` layers spread over depth (first, middle, last),
    without repeats."""
    if num_layers <= 0:
        return []
    if count <= 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})

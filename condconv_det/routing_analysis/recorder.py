"""Capturing the routing weights of a model's CondConv routers with forward hooks.

Only torch and numpy: no detectron2 import.
"""

from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from condconv_det.layers import CondConvRouter

from .summary import RoutingAnalysisError

__all__ = ["RoutingRecorder", "collect_routing", "find_routers"]


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


def collect_routing(
    model: nn.Module, mapper, records: Sequence[dict], batch_size: int = 1
) -> Dict[str, np.ndarray]:
    """Routing weights of every router of ``model`` for every image of ``records``.

    Args:
        model: in eval mode.
        mapper: a dataset mapper: record in, model input out (the evaluation loader's).
        records: detectron2 dataset dicts.
        batch_size: images per forward pass. With inputs of different sizes, a batch pads
            them, and the routers' average pooling would see the padding.

    Returns:
        {layer: (N, E) routing weights}, layers in execution order (depth).

    Raises:
        RoutingAnalysisError: a model without CondConv routers.
    """
    recorder = RoutingRecorder(model)
    if not recorder.routers:
        raise RoutingAnalysisError(
            "the model has no CondConv router: nothing to analyse. Use a CondConv config "
            "(MODEL.CONDCONV.NUM_EXPERTS > 0, or MODEL.SSD.EXTRA_NUM_EXPERTS / HEAD_NUM_EXPERTS "
            "> 0), not a static twin."
        )
    chunks: Dict[str, List[np.ndarray]] = {}
    with torch.no_grad(), recorder, tqdm(total=len(records), unit="img", desc="routing") as bar:
        for start in range(0, len(records), batch_size):
            batch = [mapper(dict(r)) for r in records[start : start + batch_size]]
            model(batch)
            for layer, weights in recorder.pop().items():
                if weights.shape[0] != len(batch):
                    raise RuntimeError(
                        f"router {layer!r} produced {weights.shape[0]} routing vectors for "
                        f"{len(batch)} images: it does not run once per image per forward"
                    )
                chunks.setdefault(layer, []).append(weights.float().cpu().numpy())
            bar.update(len(batch))
    return {layer: np.concatenate(parts) for layer, parts in chunks.items()}

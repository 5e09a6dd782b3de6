"""Training hooks of condconv_det."""

import logging
from typing import Optional

import torch
from detectron2.engine import HookBase

from ..layers import CondConvRouter, set_routing_temperature
from ..routing_analysis import RoutingRecorder, routing_entropy

__all__ = [
    "RoutingStartHook",
    "RoutingStatsHook",
    "RoutingTemperatureHook",
    "routing_temperature_at",
]

logger = logging.getLogger(__name__)


class RoutingStatsHook(HookBase):
    """Logs what the CondConv routers do during training, every ``period`` iterations.

    On a logged iteration it records, from the routing weights of that iteration's batch, for
    every router (layer names as :class:`~condconv_det.routing_analysis.RoutingRecorder`'s):

    - ``routing/<layer>/entropy``: mean entropy of the normalised routing vectors, in
      [0, log E] (log E: every expert mixed equally; 0: a single expert);
    - ``routing/<layer>/expert<i>``: mean routing weight of expert i (its usage);
    - ``routing/mean_entropy``: the mean of the layers' entropies.

    They go to the trainer's ``EventStorage`` unsmoothed, so detectron2's writers put them in
    ``metrics.json`` and TensorBoard. Forward hooks are attached just before a logged iteration
    and removed right after it; other iterations (and evaluation) run without them. Register it
    before the hooks that run the model (evaluation, PreciseBN) or write metrics, as
    :class:`~condconv_det.engine.Trainer` does.

    Args:
        period: log every ``period`` iterations (and at the last one), like ``PeriodicWriter``;
            use a multiple of the writers' period (20) so no logged value is skipped.
    """

    def __init__(self, period: int):
        if period < 1:
            raise ValueError(f"RoutingStatsHook: period must be >= 1, got {period}")
        self.period = period
        self._recorder: Optional[RoutingRecorder] = None

    def before_train(self) -> None:
        self._recorder = RoutingRecorder(self.trainer.model)
        if not self._recorder.routers:
            logger.warning(
                "MODEL.CONDCONV.ROUTING_STATS is enabled but the model has no CondConv router "
                "(static model?): no routing statistics will be logged."
            )
            self._recorder = None

    def _is_logged(self, iteration: int) -> bool:
        return (iteration + 1) % self.period == 0 or iteration == self.trainer.max_iter - 1

    def before_step(self) -> None:
        if self._recorder is not None and self._is_logged(self.trainer.iter):
            self._recorder.attach()

    def after_step(self) -> None:
        if self._recorder is None or not self._recorder.attached:
            return
        self._recorder.detach()
        routing = self._recorder.pop()
        if not routing:
            return
        storage = self.trainer.storage
        entropies = []
        with torch.no_grad():
            for layer, weights in routing.items():
                weights = weights.float()
                entropy = routing_entropy(weights).mean()
                entropies.append(entropy)
                # One transfer per layer rather than one per scalar (GPU synchronisation).
                values = torch.cat([entropy[None], weights.mean(dim=0)]).tolist()
                storage.put_scalar(f"routing/{layer}/entropy", values[0], smoothing_hint=False)
                for i, usage in enumerate(values[1:]):
                    storage.put_scalar(f"routing/{layer}/expert{i}", usage, smoothing_hint=False)
            mean_entropy = torch.stack(entropies).mean().item()
        storage.put_scalar("routing/mean_entropy", mean_entropy, smoothing_hint=False)

    def after_train(self) -> None:
        # A step that raised skipped after_step: leave no hook behind.
        if self._recorder is not None:
            self._recorder.detach()
            self._recorder.pop()


def routing_temperature_at(iteration: int, start: float, end: float, iters: int) -> float:
    """The routing temperature at ``iteration``: linear from ``start`` at iteration 0 to ``end``
    at iteration ``iters - 1`` (the last of the annealing), then ``end``; ``iters`` 0: ``end``."""
    if iters <= 1 or iteration >= iters - 1:
        return float(end)
    return float(start + (end - start) * iteration / (iters - 1))


class RoutingTemperatureHook(HookBase):
    """Anneals the temperature of every CondConv router during training (Dynamic Convolution's
    recipe, Chen et al. 2020: from 30 to 1 over the first epochs, so that all experts train
    while the routing is still nearly uniform).

    Before each step, every :class:`~condconv_det.layers.CondConvRouter` of the model gets
    :func:`routing_temperature_at` of the iteration, which is also logged as
    ``routing/temperature``. The temperature depends only on the iteration, so a resumed run
    continues exactly where it stopped.

    Args:
        start: temperature at iteration 0 (> 0).
        iters: length of the annealing in iterations (>= 0).
        end: temperature from iteration ``iters - 1`` on: the one the trained model routes
            with (``MODEL.CONDCONV.ROUTING_TEMPERATURE``); None: the routers' own, read when
            training starts.
    """

    def __init__(self, start: float, iters: int, end: Optional[float] = None):
        if not start > 0 or (end is not None and not end > 0):
            raise ValueError(
                f"RoutingTemperatureHook: temperatures must be > 0, got {start}, {end}"
            )
        if iters < 0:
            raise ValueError(f"RoutingTemperatureHook: iters must be >= 0, got {iters}")
        self.start, self.iters = float(start), int(iters)
        self.end = None if end is None else float(end)

    def _apply(self, iteration: int) -> float:
        assert self.end is not None
        temperature = routing_temperature_at(iteration, self.start, self.end, self.iters)
        set_routing_temperature(self.trainer.model, temperature)
        return temperature

    def before_train(self) -> None:
        routers = [m for m in self.trainer.model.modules() if isinstance(m, CondConvRouter)]
        if not routers:
            logger.warning(
                "A routing temperature schedule is set but the model has no CondConv router "
                "(static model?): nothing to anneal."
            )
        if self.end is None:
            temperatures = {r.temperature for r in routers} or {1.0}
            if len(temperatures) > 1:
                raise ValueError(
                    f"RoutingTemperatureHook: the routers have different temperatures "
                    f"{sorted(temperatures)}; give the final temperature (end) explicitly"
                )
            self.end = temperatures.pop()
        self._apply(self.trainer.iter)

    def before_step(self) -> None:
        temperature = self._apply(self.trainer.iter)
        self.trainer.storage.put_scalar("routing/temperature", temperature, smoothing_hint=False)


class RoutingStartHook(HookBase):
    """Holds every CondConv router at its initial routing until iteration ``start_iter``: the
    routers' gradients are zeroed before then, so the experts learn under fixed routing.

    With ``MODEL.CONDCONV.EXPERT_INIT shared`` (one kernel for all experts, routing ``1/sqrt(E)``
    for every input) the network trains exactly as its static twin until ``start_iter``, and is
    upcycled in place from there: routing then learns from a trained static network, as when a
    trained static checkpoint is upcycled. Gradients are masked rather than parameters frozen,
    so the set of trained parameters never changes (DistributedDataParallel keeps working). The
    state depends only on the iteration: a resumed run continues exactly.

    Args:
        start_iter: the first iteration whose routing gradients are kept (>= 0).
    """

    def __init__(self, start_iter: int):
        if start_iter < 0:
            raise ValueError(f"RoutingStartHook: start_iter must be >= 0, got {start_iter}")
        self.start_iter = int(start_iter)
        self._learning = True
        self._handles = []

    def _mask(self, grad):
        return grad if self._learning else torch.zeros_like(grad)

    def before_train(self) -> None:
        routers = [m for m in self.trainer.model.modules() if isinstance(m, CondConvRouter)]
        if not routers:
            logger.warning("A routing start iteration is set but the model has no CondConv router.")
        for router in routers:
            for param in router.parameters():
                if param.requires_grad:
                    self._handles.append(param.register_hook(self._mask))

    def before_step(self) -> None:
        self._learning = self.trainer.iter >= self.start_iter
        self.trainer.storage.put_scalar(
            "routing/learning", float(self._learning), smoothing_hint=False
        )

    def after_train(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

"""Upcycling: a static checkpoint into a CondConv model.

Every expert starts from the pretrained kernel ``W`` as ``W / (E r0)`` and every router at the
same routing ``r0`` for all inputs (zero weights; for sigmoid routing the bias ``logit(r0)`` with
``r0 = 1/sqrt(E)``, for softmax ``1/E``), so the mixed kernel is the pretrained one and the
model's output at load time equals the static model's. At ``r0 = 1/sqrt(E)`` an SGD step also
moves the mixed kernel as far as the static kernel's step
(:func:`~condconv_det.layers.uniform_start`).
Identical experts would stay identical under gradient descent, so each expert also gets a small
perturbation ``D_i`` with ``sum_i D_i = 0``: the mix is still exactly ``W``, but the routers'
gradients differ per expert from the first step.

With ``routers="init"`` the routers keep their initialisation instead: softmax routing then
differs per image from the first step, while its shares still sum to one, so the mix of copies
of ``W`` is ``W`` for every image (exactly with ``noise=0``); each expert learns from the
images routed to it, as in sparse upcycling. Beside a static kernel the routers always keep
theirs (the experts start at zero, so any routing computes the static kernel).
"""

import math
from typing import Dict, List, Mapping

import torch
from torch import nn

from condconv_det.layers import CondConv2d, CondConvRouter, shared_expert_weights, uniform_start

__all__ = ["UPCYCLE_ROUTERS", "check_upcycle_routers", "upcycle_state_dict"]

UPCYCLE_ROUTERS = ("uniform", "init")
"""Where upcycled routers start (``MODEL.CONDCONV.UPCYCLE_ROUTERS``): the same routing for
every input, or their own initialisation."""


def check_upcycle_routers(routers: str) -> None:
    """Raises ``ValueError`` naming ``MODEL.CONDCONV.UPCYCLE_ROUTERS`` unless ``routers`` is one
    of :data:`UPCYCLE_ROUTERS`."""
    if routers not in UPCYCLE_ROUTERS:
        raise ValueError(
            f"MODEL.CONDCONV.UPCYCLE_ROUTERS must be one of {UPCYCLE_ROUTERS}, got {routers!r}"
        )


def _routers(model: nn.Module) -> Dict[str, CondConvRouter]:
    return {name: m for name, m in model.named_modules() if isinstance(m, CondConvRouter)}


def upcycle_state_dict(
    static: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    prefix: str = "",
    noise: float = 0.01,
    seed: int = 0,
    routers: str = "uniform",
) -> Dict[str, torch.Tensor]:
    """A state dict for ``model`` (CondConv or static) from a static model's state dict.

    Args:
        static: the pretrained static weights, named as ``model``'s parameters (plus
            ``prefix``) with plain kernels where ``model`` has CondConv experts.
        model: the target model.
        prefix: prepended to ``static``'s names to get ``model``'s (e.g. ``backbone.bottom_up.``).
        noise: std of the zero-sum expert perturbation, relative to each kernel's std.
        seed: seed of that perturbation.
        routers: :data:`UPCYCLE_ROUTERS`: "uniform" sets every router to the same routing for
            all inputs; "init" leaves them out (they keep their initialisation), which needs
            softmax routing (or static kernels) for the model to start as the static one.

    Returns:
        the state dict of ``model``'s keys that ``static`` covers, plus the routers' unless
        they keep their initialisation.

    Raises:
        ValueError: an unknown ``routers``, or "init" with sigmoid routing and no static kernel.
    """
    check_upcycle_routers(routers)
    generator = torch.Generator().manual_seed(seed)
    target = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    condconvs = {name: m for name, m in model.named_modules() if isinstance(m, CondConv2d)}
    for key, value in static.items():
        name = prefix + key
        if name not in target:
            out[name] = value  # reported as unexpected by load_checkpoint_strict
            continue
        want = target[name]
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner in condconvs and tuple(want.shape) == (condconvs[owner].num_experts,) + tuple(
            value.shape
        ):
            conv = condconvs[owner]
            if conv.static_weight is not None:
                # A static kernel beside the experts: it takes the pretrained kernel, the experts
                # stay at zero, and the layer computes exactly what the static one did.
                leaf = name.rsplit(".", 1)[-1]
                out[(owner + "." if owner else "") + "static_" + leaf] = value.to(want.dtype)
                out[name] = torch.zeros_like(want)
                continue
            experts = conv.num_experts
            start = _uniform_routing(model, experts)
            out[name] = shared_expert_weights(
                value.to(want.dtype), experts, start, noise, generator
            )
        else:
            out[name] = value
    if any(c.static_weight is not None for c in condconvs.values()):
        # Zero experts make the routing irrelevant at the start; the routers keep their own
        # (e.g. Glorot) initialisation, which differs between experts so that they specialise.
        return out
    if routers == "init":
        sigmoid = [n for n, r in _routers(model).items() if r.activation != "softmax"]
        if sigmoid:
            raise ValueError(
                f"MODEL.CONDCONV.UPCYCLE_ROUTERS 'init' needs softmax routing: router "
                f"{sigmoid[0]!r} uses {_routers(model)[sigmoid[0]].activation}, whose shares do "
                "not sum to one, so the upcycled model would not compute the static one. Set "
                "MODEL.CONDCONV.ROUTING_ACTIVATION softmax, or UPCYCLE_ROUTERS uniform."
            )
        return out
    for name, router in _routers(model).items():
        weight = torch.zeros_like(router.fc.weight)
        bias = torch.zeros_like(router.fc.bias)
        if router.activation == "sigmoid":
            # The logits are divided by the temperature: the bias is scaled back by it, so the
            # routing is r0 at the router's temperature now (a schedule then moves it on).
            bias.fill_(_logit(uniform_start("sigmoid", router.num_experts)) * router.temperature)
        out[f"{name}.fc.weight"], out[f"{name}.fc.bias"] = weight, bias
    return out


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _uniform_routing(model: nn.Module, experts: int) -> float:
    """The routing weight every expert starts with after upcycling (:func:`uniform_start`)."""
    routers = list(_routers(model).values())
    return uniform_start(routers[0].activation if routers else "sigmoid", experts)


def _condconv_keys(model: nn.Module) -> List[str]:
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, CondConv2d):
            prefix = f"{name}." if name else ""
            keys.append(prefix + "weight")
            if module.bias is not None:
                keys.append(prefix + "bias")
    return keys

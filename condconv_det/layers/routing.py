"""Routing functions for CondConv and the self-routing drop-in for ``nn.Conv2d``."""

import math
from typing import Any, Dict, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import _condconv_fast as fast
from ._checks import IntOrPair, check_integer, check_number
from .condconv import CondConv2d

__all__ = [
    "CondConvRouter",
    "RoutedCondConv2d",
    "ROUTING_ACTIVATIONS",
    "ROUTER_INITS",
    "ROUTER_NORMS",
    "configure_condconv",
    "reset_routers",
    "set_routing_temperature",
    "set_up_routers",
]

# "sigmoid": the paper's routing, r = sigmoid(FC(GAP(x))); the weights need not sum to one,
#     so several experts can be fully on (paper, sec. 3 and the routing ablation).
# "softmax": r = softmax(FC(GAP(x)) / temperature), which sums to one; the routing of Dynamic
#     Convolution (Chen et al., CVPR 2020), where the temperature is annealed from ~30 to 1.
ROUTING_ACTIVATIONS = ("sigmoid", "softmax")
ROUTER_INITS = ("glorot", "zeros")
# Norm inside the router: none, batch norm (ODConv's), layer norm.
ROUTER_NORMS = ("", "BN", "LN")


class CondConvRouter(nn.Module):
    """Computes per-example routing weights: global average pool -> dropout -> linear -> act.

    One router can feed every CondConv of a block (the official EfficientNet-CondConv code
    routes once per block from the block's input)::

        router = CondConvRouter(64, num_experts=8)
        conv1 = CondConv2d(64, 64, 3, padding=1, num_experts=8)
        conv2 = CondConv2d(64, 64, 3, padding=1, num_experts=8)
        r = router(x)
        y = conv2(conv1(x, r).relu(), r)

    With ``hidden_ratio > 0`` the linear layer becomes two, with a hidden layer of
    ``max(round(in_channels * hidden_ratio), 4)`` units, an optional norm and a ReLU between
    them (Dynamic Convolution's router, Chen et al. 2020, uses a ratio of 1/4; ODConv's, Li et
    al. 2022, puts a batch norm after the reduction). Without a hidden layer, ``norm`` acts on the
    pooled input.

    Args:
        in_channels: channels of the input that is pooled.
        num_experts: number of routing weights per example.
        activation: "sigmoid" (the paper) or "softmax" (Dynamic Convolution); see
            :data:`ROUTING_ACTIVATIONS`.
        temperature: the logits are divided by it before the activation (> 1 flattens the
            routing towards its value at zero logits). A plain attribute, so that a training
            hook can anneal it (:class:`~condconv_det.engine.RoutingTemperatureHook`).
        dropout: dropout probability on the pooled routing input (training only).
        init: "glorot" (the official code's Dense init: every example starts with different
            routing weights near 0.5) or "zeros" (zero output weights: every example starts with
            the same routing, so the network starts as a reparametrised static model and learns
            to route). See :func:`reset_routers`.
        hidden_ratio: hidden units per input channel; 0 for the paper's single linear layer.
        norm: one of :data:`ROUTER_NORMS`: "" (none), "BN" (batch norm over the batch's
            examples) or "LN" (layer norm within each example).
        expert_dropout: probability of dropping each routing weight of each example during
            training, the others rescaled by ``1 / (1 - p)`` (DropExpert).
        detach_input: pool a detached input: the routers and experts learn as usual, but no
            gradient flows from the routing back into the features it is computed from.
    """

    __constants__ = ["in_channels", "num_experts", "activation", "expert_dropout", "detach_input"]

    def __init__(
        self,
        in_channels: int,
        num_experts: int,
        *,
        activation: str = "sigmoid",
        temperature: float = 1.0,
        dropout: float = 0.0,
        init: str = "glorot",
        hidden_ratio: float = 0.0,
        norm: str = "",
        expert_dropout: float = 0.0,
        detach_input: bool = False,
    ):
        super().__init__()
        owner = type(self).__name__
        in_channels = check_integer(owner, "in_channels", in_channels, 1)
        num_experts = check_integer(owner, "num_experts", num_experts, 1)
        temperature = check_number(owner, "temperature", temperature)
        dropout = check_number(owner, "dropout", dropout)
        hidden_ratio = check_number(owner, "hidden_ratio", hidden_ratio)
        expert_dropout = check_number(owner, "expert_dropout", expert_dropout)
        if activation not in ROUTING_ACTIVATIONS:
            raise ValueError(
                f"CondConvRouter: activation must be one of {ROUTING_ACTIVATIONS}, "
                f"got {activation!r}"
            )
        if not temperature > 0:
            raise ValueError(f"CondConvRouter: temperature must be > 0, got {temperature}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CondConvRouter: dropout must be in [0, 1), got {dropout}")
        if not hidden_ratio >= 0:
            raise ValueError(f"CondConvRouter: hidden_ratio must be >= 0, got {hidden_ratio}")
        if norm not in ROUTER_NORMS:
            raise ValueError(f"CondConvRouter: norm must be one of {ROUTER_NORMS}, got {norm!r}")
        if not 0.0 <= expert_dropout < 1.0:
            raise ValueError(
                f"CondConvRouter: expert_dropout must be in [0, 1), got {expert_dropout}"
            )
        self.in_channels = in_channels
        self.num_experts = num_experts
        self.activation = activation
        self.temperature = float(temperature)
        self.expert_dropout = float(expert_dropout)
        self.detach_input = bool(detach_input)
        self.hidden_ratio = float(hidden_ratio)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        fc_in = in_channels
        self.reduce = None
        if hidden_ratio > 0:
            fc_in = max(int(round(in_channels * hidden_ratio)), 4)
            # No bias before a norm: the norm's shift takes its place.
            self.reduce = nn.Linear(in_channels, fc_in, bias=not norm)
        self.norm: nn.Module = _router_norm(norm, fc_in)
        self.fc = nn.Linear(fc_in, num_experts)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "glorot") -> None:
        """(Re-)initialises the routing layer; ``init`` as in the constructor. A hidden layer
        keeps PyTorch's default init (with "zeros" it must not be zero, or nothing would learn)."""
        if init not in ROUTER_INITS:
            raise ValueError(f"CondConvRouter: init must be one of {ROUTER_INITS}, got {init!r}")
        if init == "glorot":
            # As the official code's Dense layer: Glorot-uniform kernel, zero bias, so that every
            # routing weight starts near sigmoid(0) = 0.5.
            nn.init.xavier_uniform_(self.fc.weight)
        else:
            nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, H, W).

        Returns:
            (B, num_experts) routing weights.
        """
        if not torch.jit.is_scripting() and not self.training:
            # Inference: one native call, which also checks the input (None where anything is
            # off, so the checks below name it).
            r = self._native_forward(x)
            if r is not None:
                return r
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"CondConvRouter expects input to be a torch.Tensor, got {type(x).__name__}"
            )
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                "CondConvRouter expects input of shape (B, {}, H, W), got {}".format(
                    self.in_channels, list(x.shape)
                )
            )
        if x.shape[2] == 0 or x.shape[3] == 0:
            # The mean of no pixels is NaN: it would route every example with NaN weights.
            raise ValueError(
                "CondConvRouter expects an input of at least one pixel, got shape {}".format(
                    list(x.shape)
                )
            )
        # Routing stays in the dtype of the router's weights (float32) even under autocast and
        # on a bfloat16 input: the pool accumulates in that dtype without copying the input, and
        # a few hundred multiply-adds per example cost nothing, while rounding them would move
        # every expert's share of the kernel.
        if self.detach_input:
            x = x.detach()
        fc = self.fc
        h = x.mean(dim=(2, 3), dtype=fc.weight.dtype)
        if self.dropout.training:  # an nn.Dropout (or nn.Identity) that is not training: identity
            h = self.dropout(h)
        reduce = self.reduce
        if reduce is not None:
            h = self._linear(h, reduce.weight, reduce.bias)
            h = F.relu(self.norm(h))
        else:
            h = self.norm(h)
        logits = self._linear(h, fc.weight, fc.bias)
        if self.temperature != 1.0:  # one operator less per router at the default temperature
            logits = logits / self.temperature
        if self.activation == "softmax":
            r = F.softmax(logits, dim=1)
        else:
            r = torch.sigmoid(logits)
        if self.training and self.expert_dropout > 0:
            keep = 1.0 - self.expert_dropout
            r = r * torch.bernoulli(torch.full_like(r, keep)) / keep
        return r

    @torch.jit.unused
    def _native_forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The routing by :func:`._condconv_fast.native_route` for a router in inference with
        no norm and no dropout running, else None."""
        if self.dropout.training or type(self.norm) is not nn.Identity:
            return None
        reduce = self.reduce
        if reduce is not None and type(reduce) is not nn.Linear:
            return None
        if type(x) is not torch.Tensor or x.dim() != 4 or x.shape[1] != self.in_channels:
            return None
        return fast.native_route(
            x,
            None if reduce is None else reduce.weight,
            None if reduce is None else reduce.bias,
            self.fc.weight,
            self.fc.bias,
            self.activation == "softmax",
            self.temperature,
        )

    def _linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.linear(x, weight, bias)
        return _linear_without_autocast(x, weight, bias)

    def extra_repr(self) -> str:
        s = f"activation={self.activation!r}"
        if self.temperature != 1.0:
            s += f", temperature={self.temperature}"
        if self.expert_dropout > 0:
            s += f", expert_dropout={self.expert_dropout}"
        if self.detach_input:
            s += ", detach_input=True"
        return s


def _router_norm(norm: str, channels: int) -> nn.Module:
    if norm == "BN":
        return nn.BatchNorm1d(channels)
    if norm == "LN":
        return nn.LayerNorm(channels)
    return nn.Identity()


@torch.jit.unused
def _linear_without_autocast(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """``F.linear`` in the dtype of its arguments, also inside an autocast region."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return F.linear(x, weight, bias)
    return F.linear(x, weight, bias)


class RoutedCondConv2d(CondConv2d):
    """A drop-in replacement for ``nn.Conv2d`` that routes itself: ``forward(x)``.

    Takes ``nn.Conv2d``'s arguments plus ``num_experts`` and the router's options; the router
    (:class:`CondConvRouter`) pools this layer's own input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: Union[str, IntOrPair] = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        num_experts: int = 8,
        path: str = "auto",
        device=None,
        dtype=None,
        *,
        routing_activation: str = "sigmoid",
        routing_temperature: float = 1.0,
        routing_dropout: float = 0.0,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            num_experts,
            path,
            device,
            dtype,
        )
        self.router = CondConvRouter(
            in_channels,
            num_experts,
            activation=routing_activation,
            temperature=routing_temperature,
            dropout=routing_dropout,
        )
        if device is not None or dtype is not None:
            self.router.to(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """
        Args:
            x: (B, in_channels, H, W).

        Returns:
            (B, out_channels, H', W').
        """
        return self._conv_forward(x, self.router(x))


def check_router_init(init: Optional[str]) -> None:
    """Raises a ValueError naming the choices unless ``init`` is None (keep each router's own
    initialisation) or one of :data:`ROUTER_INITS`; for builders taking ``router_init``."""
    if init is not None and init not in ROUTER_INITS:
        raise ValueError(f"router_init must be None or one of {ROUTER_INITS}, got {init!r}")


def reset_routers(module: nn.Module, init: str) -> nn.Module:
    """Re-initialises every :class:`CondConvRouter` inside ``module``; returns ``module``.

    "zeros" matters when CondConv is trained from scratch in deep stacks without residual
    connections (MobileNetV1): with Glorot-initialised routers each example starts with its own
    kernel scale, the per-example scales multiply through the stack and some examples'
    features vanish (measured in docs/training.md, "Router initialisation").
    """
    for m in module.modules():
        if isinstance(m, CondConvRouter):
            m.reset_parameters(init)
    return module


def set_up_routers(
    module: nn.Module,
    router_init: Optional[str] = None,
    condconv_options: Optional[Dict[str, Any]] = None,
    configured: Optional[Iterable[nn.Module]] = None,
) -> nn.Module:
    """What a model's builders do once its layers exist; returns ``module``.

    Every router inside ``module`` is re-initialised as ``router_init`` says (None: each keeps
    its own), then :func:`configure_condconv` applies ``condconv_options`` to ``configured``
    (default: ``module`` itself). Routers that it rebuilds (for another hidden layer or norm)
    start as ``router_init`` too, unless the options name their own ``router_init``: a hidden
    layer set in the options must not turn zero-initialised routers back to Glorot's.
    """
    if router_init is not None:
        reset_routers(module, router_init)
    if condconv_options:
        options = dict(condconv_options)
        if router_init is not None:
            options.setdefault("router_init", router_init)
        for m in (module,) if configured is None else configured:
            configure_condconv(m, **options)
    return module


# How the experts start: "independent" (each as a plain conv of its shape; the official code's and
# timm's), "mixed_variance" (each scaled so that the mixed kernel at the routers' starting
# point, sigmoid(0) = 1/2 or softmax's 1/E for every expert, has a plain kernel's variance) or
# "shared" (one plain kernel for all experts, as upcycling a freshly initialised static layer:
# the network starts as its static twin and, at sigmoid routing, learns at its rate).
EXPERT_INITS = ("independent", "mixed_variance", "shared")


def uniform_start(activation: str, experts: int) -> float:
    """The routing weight every expert starts with when a static kernel ``W`` is shared out as
    ``W / (E r)`` per expert. An SGD step then moves the mixed kernel by ``E r^2`` times the
    static kernel's step: sigmoid routing starts at ``r = 1 / sqrt(E)``, where that factor is 1
    (a single expert at 1/2: sigmoid cannot reach 1); softmax's uniform routing is ``1 / E``."""
    if activation == "softmax":
        return 1.0 / experts
    return 1.0 / math.sqrt(experts) if experts > 1 else 0.5


def shared_expert_weights(
    kernel: torch.Tensor,
    experts: int,
    start: float,
    noise: float = 0.01,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``experts`` copies of ``kernel / (E start)`` (a weight or a bias), so that uniform routing
    at ``start`` mixes exactly ``kernel``; weights (more than one dimension) get a zero-sum
    perturbation of ``noise`` times the kernel's std, so that the experts can grow apart."""
    stacked = kernel.unsqueeze(0).repeat(experts, *([1] * kernel.dim())) / (experts * start)
    if experts > 1 and noise > 0 and kernel.dim() > 1:
        delta = torch.randn(stacked.shape, generator=generator, dtype=stacked.dtype).to(
            stacked.device
        )
        stacked = stacked + (delta - delta.mean(dim=0, keepdim=True)) * noise * kernel.float().std()
    return stacked


def configure_condconv(
    module: nn.Module,
    *,
    static_kernel: bool = False,
    router_hidden_ratio: float = 0.0,
    router_norm: str = "",
    expert_dropout: float = 0.0,
    router_detach_input: bool = False,
    normalize_kernel: bool = False,
    expert_init: str = "independent",
    router_init: Optional[str] = None,
) -> nn.Module:
    """Applies the training options of CondConv to every router and CondConv layer inside
    ``module``, in place, once the module is built; returns ``module``.

    Args:
        static_kernel: give every :class:`CondConv2d` a static kernel plus zero-initialised
            experts (:meth:`CondConv2d.add_static_kernel`): the network starts as its static twin.
        router_hidden_ratio, router_norm, expert_dropout, router_detach_input: the router's
            design (see :class:`CondConvRouter`: ``hidden_ratio``, ``norm``, ``expert_dropout``,
            ``detach_input``); routers of another hidden layer or norm are rebuilt, keeping
            their activation, temperature and input dropout.
        normalize_kernel: every :class:`CondConv2d` scales each example's mixed kernel to
            unit norm per output channel (see ``CondConv2d(normalize_kernel=...)``).
        expert_init: one of :data:`EXPERT_INITS`. "mixed_variance" scales each layer's experts
            by ``1 / (r0 sqrt(E))`` for a starting routing weight ``r0``; "shared" starts every
            expert from one plain kernel and every router at the same routing for all inputs
            (:func:`uniform_start`), so the network starts as its static twin; neither does
            anything with ``static_kernel`` (the experts start at zero).
        router_init: how rebuilt routers start (see :func:`reset_routers`); None: "glorot".
            Routers that are kept keep their weights.
    """
    if expert_init not in EXPERT_INITS:
        raise ValueError(f"expert_init must be one of {EXPERT_INITS}, got {expert_init!r}")
    check_router_init(router_init)
    activations = set()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, CondConvRouter):
                continue
            activations.add(child.activation)
            child.expert_dropout = float(expert_dropout)
            child.detach_input = bool(router_detach_input)
            if (
                child.hidden_ratio == float(router_hidden_ratio)
                and _norm_name(child.norm) == router_norm
            ):
                continue
            rebuilt = CondConvRouter(
                child.in_channels,
                child.num_experts,
                activation=child.activation,
                temperature=child.temperature,
                dropout=child.dropout.p if isinstance(child.dropout, nn.Dropout) else 0.0,
                hidden_ratio=router_hidden_ratio,
                norm=router_norm,
                expert_dropout=expert_dropout,
                detach_input=router_detach_input,
                init=router_init or "glorot",
            ).to(device=child.fc.weight.device, dtype=child.fc.weight.dtype)
            rebuilt.train(child.training)
            if not any(p.requires_grad for p in child.parameters()):
                rebuilt.requires_grad_(False)  # a frozen block's router stays frozen
            setattr(parent, name, rebuilt)
    if expert_init == "mixed_variance" and len(activations) > 1:
        raise ValueError(
            "expert_init='mixed_variance' needs one routing activation for the whole module, "
            f"got {sorted(activations)}"
        )
    # Routing weights start at sigmoid(0) = 1/2 or softmax's 1/E.
    sigmoid = activations != {"softmax"}
    for m in module.modules():
        if not isinstance(m, CondConv2d):
            continue
        m.normalize_kernel = bool(normalize_kernel)
        if static_kernel:
            m.add_static_kernel()
        elif expert_init == "mixed_variance" and m.static_weight is None:
            start = 0.5 if sigmoid else 1.0 / m.num_experts
            with torch.no_grad():
                m.weight.mul_(1.0 / (start * math.sqrt(m.num_experts)))
        elif expert_init == "shared" and m.static_weight is None:
            # Expert 0 was drawn as a plain conv of its shape: every expert starts from it.
            start = uniform_start("sigmoid" if sigmoid else "softmax", m.num_experts)
            with torch.no_grad():
                m.weight.copy_(shared_expert_weights(m.weight[0].clone(), m.num_experts, start))
                if m.bias is not None:
                    m.bias.copy_(shared_expert_weights(m.bias[0].clone(), m.num_experts, start))
    if expert_init == "shared" and not static_kernel:
        for m in module.modules():
            if isinstance(m, CondConvRouter):
                m.reset_parameters("zeros")
                if m.activation == "sigmoid":
                    start = uniform_start("sigmoid", m.num_experts)
                    with torch.no_grad():
                        m.fc.bias.fill_(math.log(start / (1.0 - start)) * m.temperature)
    return module


def _norm_name(norm: nn.Module) -> str:
    if isinstance(norm, nn.BatchNorm1d):
        return "BN"
    if isinstance(norm, nn.LayerNorm):
        return "LN"
    return ""


def set_routing_temperature(module: nn.Module, temperature: float) -> int:
    """Sets the temperature of every :class:`CondConvRouter` inside ``module``; returns how many
    routers there are."""
    temperature = check_number("set_routing_temperature", "temperature", temperature)
    if not temperature > 0:
        raise ValueError(f"routing temperature must be > 0, got {temperature}")
    count = 0
    for m in module.modules():
        if isinstance(m, CondConvRouter):
            m.temperature = float(temperature)
            count += 1
    return count

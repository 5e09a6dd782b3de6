"""CondConv with detectron2's conv conventions, in plain PyTorch: an attached norm and
activation, routing that comes either from the caller (one router per block) or from the
layer's own router, and He initialisation of each expert."""

from typing import Callable, Optional

import torch
from torch import nn

from .condconv import CondConv2d
from .routing import CondConvRouter

__all__ = ["CondConv2dNorm", "msra_fill_experts"]


class CondConv2dNorm(CondConv2d):
    """:class:`CondConv2d` followed by an optional norm and activation, like detectron2's
    ``Conv2d(..., norm=, activation=)``, so that parameter names match (``conv1.weight``,
    ``conv1.norm.weight``, ...).

    Args:
        *args, **kwargs: those of :class:`CondConv2d`.
        norm: a normalization module applied after the convolution, or None.
        activation: a callable applied last, or None.
        router: a router of this layer's own ("layer" routing); without one, ``forward`` needs
            the routing weights.
    """

    def __init__(
        self,
        *args,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        router: Optional[CondConvRouter] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation
        self.router = router

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, routing_weights: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W).
            routing_weights: (B, E); None when the layer has its own router.
        """
        if routing_weights is None:
            if self.router is None:
                raise ValueError(
                    "CondConv2dNorm has no router of its own: pass routing_weights "
                    "(block routing) or build it with router=CondConvRouter(...)"
                )
            routing_weights = self.router(x)
        x = self._conv_forward(self._pad(x), routing_weights)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Padding applied after routing and before the convolution, beyond the layer's own
        ``padding``: none here; subclasses pad at run time (TensorFlow's "SAME")."""
        return x


def msra_fill_experts(conv: CondConv2d) -> CondConv2d:
    """detectron2's ``c2_msra_fill`` applied to each expert on its own (fvcore's version takes
    dim 0 of the stacked weight, the experts, as fan-out): He-normal with fan-out, zero bias."""
    for expert in range(conv.num_experts):
        nn.init.kaiming_normal_(conv.weight[expert], mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv

"""Plain references for CondConv: what the layer must compute, written the slow, obvious way."""

from typing import Optional

import torch
import torch.nn.functional as F


def condconv_reference(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride,
    padding,
    dilation,
    groups: int,
) -> torch.Tensor:
    """One F.conv2d per example with kernel sum_i r[b, i] * W_i (and bias likewise)."""
    outputs = []
    for b in range(x.shape[0]):
        kernel = sum(routing_weights[b, i] * weight[i] for i in range(weight.shape[0]))
        kernel_bias = None
        if bias is not None:
            kernel_bias = sum(routing_weights[b, i] * bias[i] for i in range(bias.shape[0]))
        outputs.append(
            F.conv2d(x[b : b + 1], kernel, kernel_bias, stride, padding, dilation, groups)
        )
    return torch.cat(outputs)

"""Conditionally parameterized convolution (CondConv).

Yang, Bender, Le, Ngiam, "CondConv: Conditionally Parameterized Convolutions for Efficient
Inference", NeurIPS 2019. A CondConv layer holds ``E`` expert kernels ``W_1 .. W_E`` of one
ordinary convolution's shape and convolves each example ``b`` with its own kernel

    W(x_b) = sum_i r[b, i] * W_i,

where ``r`` are routing weights computed from the example (see :mod:`.routing`). Because the
convolution is linear this equals a mixture of ``E`` convolutions, at the cost of one.

This module is pure PyTorch: it imports nothing from detectron2.
"""
import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CondConv2d", "cond_conv2d", "CONDCONV_PATHS"]

# Ways to compute the same result; "auto" picks one per call from the shapes.
#   single:  batch of one; one plain convolution with the example's mixed kernel.
#   grouped: per-example kernels, the batch folded into the groups of one grouped convolution.
#   matmul:  batched matrix product with the per-example kernels; for 1x1 kernels directly on
#            the input, for larger kernels on its unfolded patches (im2col). The batch size is
#            never baked into the graph, so this is also the path used for tracing and export.
CONDCONV_PATHS = ("auto", "single", "grouped", "matmul")

_IntOrPair = Union[int, Tuple[int, int]]


def _pair(value: _IntOrPair, name: str) -> Tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (pair[0], pair[1])


def _mix(routing_weights: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """Per-example mixture of expert tensors.

    Args:
        routing_weights: (B, E).
        stacked: (E, *S), one tensor of shape S per expert.

    Returns:
        (B, *S): ``out[b] = sum_i routing_weights[b, i] * stacked[i]``.
    """
    num_experts = stacked.shape[0]
    batch = routing_weights.shape[0]
    flat = stacked.reshape(num_experts, -1)
    numel = flat.shape[1]
    chunks = 1
    if not torch.jit.is_scripting() and not torch.jit.is_tracing():
        if batch == 1 and numel >= _SPLIT_MIX_NUMEL:
            chunks = _SPLIT_MIX_CHUNKS if numel % _SPLIT_MIX_CHUNKS == 0 else 1
    if chunks > 1:
        # At batch 1 the mix is a matrix-vector product bound by reading the experts; as one
        # (1, E) x (E, P) product it does not keep both CPU threads reading (measured: 4.0 ms
        # vs 3.2 ms for 8 experts of a 512->512 3x3 conv, tools/benchmark_layer.py machine).
        # The same product as a batch of column blocks does.
        blocks = flat.reshape(num_experts, chunks, numel // chunks).transpose(0, 1)
        mixed = torch.bmm(routing_weights.expand(chunks, 1, num_experts), blocks)
    else:
        mixed = torch.mm(routing_weights, flat)
    return mixed.reshape([batch] + list(stacked.shape[1:]))


# Batch-1 mixes of at least this many elements per expert are split into column blocks.
_SPLIT_MIX_NUMEL = 1 << 18
_SPLIT_MIX_CHUNKS = 8


def _conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def cond_conv2d(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
    path: str = "auto",
) -> torch.Tensor:
    """Functional CondConv with zero padding.

    Args:
        x: input of shape (B, C, H, W).
        routing_weights: (B, E), the weight of each expert for each example.
        weight: expert kernels, (E, O, C // groups, kh, kw).
        bias: expert biases, (E, O), or None.
        stride, padding, dilation, groups: as for :func:`torch.nn.functional.conv2d`.
        path: one of :data:`CONDCONV_PATHS`; all give the same result up to rounding.

    Returns:
        (B, O, H', W'): for each example b, ``conv2d(x[b], sum_i r[b, i] W_i) + sum_i r[b, i] b_i``.
    """
    if path == "auto":
        path = _auto_path(x, weight, padding)
    batch = x.shape[0]
    out_channels = weight.shape[1]
    kh, kw = weight.shape[3], weight.shape[4]
    kernels = _mix(routing_weights, weight)  # (B, O, C/g, kh, kw)
    biases: Optional[torch.Tensor] = None
    if bias is not None:
        biases = torch.mm(routing_weights, bias)  # (B, O)

    if path == "single":
        if batch != 1:
            raise ValueError("CondConv2d path 'single' needs a batch of one, got {}".format(batch))
        b0: Optional[torch.Tensor] = None
        if biases is not None:
            b0 = biases[0]
        return F.conv2d(x, kernels[0], b0, stride, padding, dilation, groups)

    if path == "grouped":
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
        folded = x.reshape(1, batch * channels, height, width)
        fb: Optional[torch.Tensor] = None
        if biases is not None:
            fb = biases.reshape(batch * out_channels)
        out = F.conv2d(
            folded,
            kernels.reshape(batch * out_channels, channels // groups, kh, kw),
            fb,
            stride,
            padding,
            dilation,
            groups * batch,
        )
        return out.reshape(batch, out_channels, out.shape[2], out.shape[3])

    if path == "matmul":
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
        out_h = _conv_out_size(height, kh, stride[0], padding[0], dilation[0])
        out_w = _conv_out_size(width, kw, stride[1], padding[1], dilation[1])
        if kh == 1 and kw == 1:
            if padding[0] > 0 or padding[1] > 0:
                x = F.pad(x, [padding[1], padding[1], padding[0], padding[0]])
            if stride[0] > 1 or stride[1] > 1:
                x = x[:, :, :: stride[0], :: stride[1]]
            cols = x.reshape(batch * groups, channels // groups, out_h * out_w)
        else:
            # (B, C*kh*kw, L) with C outermost, matching the kernel's (C/g, kh, kw) layout.
            cols = F.unfold(x, [kh, kw], dilation=dilation, padding=padding, stride=stride)
            cols = cols.reshape(batch * groups, channels // groups * kh * kw, out_h * out_w)
        kernels = kernels.reshape(batch * groups, out_channels // groups, -1)
        out = torch.bmm(kernels, cols).reshape(batch, out_channels, out_h, out_w)
        if biases is not None:
            out = out + biases.reshape(batch, out_channels, 1, 1)
        return out

    raise ValueError(
        "unknown CondConv2d path '{}'; expected 'auto', 'single', 'grouped' or 'matmul'".format(path)
    )


def _auto_path(x: torch.Tensor, weight: torch.Tensor, padding: Tuple[int, int]) -> str:
    if not torch.jit.is_scripting():
        # A traced or exported graph must not bake the batch size into the group count.
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return "matmul"
    if x.shape[0] == 1:
        return "single"
    if weight.shape[3] == 1 and weight.shape[4] == 1 and padding[0] == 0 and padding[1] == 0:
        return "matmul"
    return "grouped"


class CondConv2d(nn.Module):
    """A 2D convolution whose kernel is a per-example mixture of ``num_experts`` kernels.

    Takes the arguments of :class:`torch.nn.Conv2d`, in its order, plus ``num_experts``.
    The routing weights are an input of :meth:`forward`, so one router can feed every CondConv
    of a block, as in the official EfficientNet-CondConv code; see :class:`.CondConvRouter`
    and :class:`.RoutedCondConv2d` for a self-routing drop-in for ``nn.Conv2d``.

    Attributes:
        weight: (E, out_channels, in_channels // groups, kh, kw): ``weight[i]`` is expert i's
            kernel, an ordinary ``nn.Conv2d`` weight.
        bias: (E, out_channels) or None.
        path: how to compute the result, one of :data:`CONDCONV_PATHS` (default "auto").
    """

    __constants__ = [
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "num_experts",
        "padding_mode",
        "path",
    ]
    _pre_pad: List[int]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrPair,
        stride: _IntOrPair = 1,
        padding: Union[str, _IntOrPair] = 0,
        dilation: _IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        num_experts: int = 8,
        path: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"CondConv2d needs num_experts >= 1, got {num_experts!r}")
        if groups < 1:
            raise ValueError(f"CondConv2d needs groups >= 1, got {groups}")
        if in_channels % groups != 0:
            raise ValueError(
                f"CondConv2d: in_channels ({in_channels}) must be divisible by groups ({groups})"
            )
        if out_channels % groups != 0:
            raise ValueError(
                f"CondConv2d: out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                f"CondConv2d: padding_mode must be 'zeros', 'reflect', 'replicate' or "
                f"'circular', got {padding_mode!r}"
            )
        if path not in CONDCONV_PATHS:
            raise ValueError(f"CondConv2d: path must be one of {CONDCONV_PATHS}, got {path!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.num_experts = num_experts
        self.padding_mode = padding_mode
        self.path = path
        # Padding is resolved here to (top, bottom, left, right) so that forward only sees
        # ints: symmetric zero padding goes to the convolution itself, anything else is applied
        # with F.pad first.
        pads = self._resolve_padding(padding)
        self._padding_arg = padding
        if padding_mode == "zeros" and pads[0] == pads[1] and pads[2] == pads[3]:
            self.padding = (pads[0], pads[2])
            self._pre_pad = []
        else:
            self.padding = (0, 0)
            self._pre_pad = [pads[2], pads[3], pads[0], pads[1]]  # F.pad order: W then H

        factory = {"device": device, "dtype": dtype}
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(
            torch.empty((num_experts, out_channels, in_channels // groups, kh, kw), **factory)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty((num_experts, out_channels), **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _resolve_padding(self, padding: Union[str, _IntOrPair]) -> Tuple[int, int, int, int]:
        kh, kw = self.kernel_size
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0, 0, 0)
            if padding == "same":
                if self.stride != (1, 1):
                    raise ValueError("CondConv2d: padding='same' is not supported for strides > 1")
                total_h = self.dilation[0] * (kh - 1)
                total_w = self.dilation[1] * (kw - 1)
                # Extra padding on the bottom/right, as nn.Conv2d does.
                return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
            raise ValueError(f"CondConv2d: padding must be 'same', 'valid' or ints, got {padding!r}")
        ph, pw = _pair(padding, "padding")
        return (ph, ph, pw, pw)

    def reset_parameters(self) -> None:
        """Initialises every expert as ``nn.Conv2d`` initialises a kernel of the expert's shape.

        Initialising the stacked 5-D tensor at once would compute fan-in/fan-out from the wrong
        dimensions (e.g. fvcore's ``c2_msra_fill`` takes dim 0, the experts, as fan-out).
        """
        for expert in range(self.num_experts):
            nn.init.kaiming_uniform_(self.weight[expert], a=math.sqrt(5))
        if self.bias is not None:
            fan_in = (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, H, W).
            routing_weights: (B, num_experts).

        Returns:
            (B, out_channels, H', W').
        """
        return self._conv_forward(x, routing_weights)

    def _conv_forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                "CondConv2d expects input of shape (B, {}, H, W), got {}".format(
                    self.in_channels, list(x.shape)
                )
            )
        if (
            routing_weights.dim() != 2
            or routing_weights.shape[0] != x.shape[0]
            or routing_weights.shape[1] != self.num_experts
        ):
            raise ValueError(
                "CondConv2d expects routing_weights of shape (B, num_experts) = ({}, {}), "
                "got {}".format(x.shape[0], self.num_experts, list(routing_weights.shape))
            )
        if len(self._pre_pad) > 0:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._pre_pad, mode=mode)
        return cond_conv2d(
            x,
            routing_weights.to(self.weight.dtype),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.path,
        )

    def expert_conv(self, expert: int) -> nn.Conv2d:
        """Expert ``expert`` as a plain ``nn.Conv2d`` (a copy), e.g. to inspect or export it."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self._padding_arg,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight[expert])
            if self.bias is not None:
                conv.bias.copy_(self.bias[expert])
        return conv

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, num_experts={self.num_experts}"
        )
        if self._padding_arg not in (0, (0, 0)):
            s += f", padding={self._padding_arg}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.path != "auto":
            s += f", path={self.path!r}"
        return s

"""Conditionally parameterized convolution (CondConv).

Yang, Bender, Le, Ngiam, "CondConv: Conditionally Parameterized Convolutions for Efficient
Inference", NeurIPS 2019. A CondConv layer holds ``E`` expert kernels ``W_1 .. W_E`` of one
ordinary convolution's shape and convolves each example ``b`` with its own kernel

    W(x_b) = sum_i r[b, i] * W_i,

where ``r`` are routing weights computed from the example (see :mod:`.routing`). Because the
convolution is linear this equals a mixture of ``E`` convolutions, at the cost of one.

This module computes it plainly: mix each example's kernel, then convolve, one example at a
time ("single") or the whole batch as one grouped convolution ("grouped"). The faster paths,
and the rules by which "auto" picks a path, are in :mod:`._condconv_fast`.

This module is pure PyTorch: it imports nothing from detectron2.
"""

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import _condconv_fast as fast
from ._checks import IntOrPair, check_integer, check_pair, raise_bad_input, resolve_padding

__all__ = ["CondConv2d", "cond_conv2d", "CONDCONV_PATHS"]

# Ways to compute the same result; "auto" picks one per call (fast.auto_path).
#   single:  batch of one; one plain convolution with the example's mixed kernel.
#   grouped: per-example kernels, the batch folded into the groups of one grouped convolution.
#   matmul:  batched matrix product with the per-example kernels; for 1x1 kernels directly on
#            the input, for larger kernels on its unfolded patches (im2col). The batch size is
#            never baked into the graph, so "auto" takes it whenever the call is recorded for
#            other batch sizes: TorchScript tracing, ONNX export (either exporter), torch.export.
#   experts: no kernel mix; one convolution with all E experts side by side (E x the output
#            channels), then the E outputs mixed per example. E x the conv's multiply-adds, but
#            it reads each expert once and writes no mixed kernel: for when batch x output
#            pixels is tiny (SSD's last extra layers), where the mix is the whole cost.
CONDCONV_PATHS = ("auto", "single", "grouped", "matmul", "experts")


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
        path: one of :data:`CONDCONV_PATHS`; all give the same result up to rounding. An empty
            batch (B = 0) takes "experts", whatever ``path`` says.

    Returns:
        (B, O, H', W'): for each example b, ``conv2d(x[b], sum_i r[b, i] W_i) + sum_i r[b, i] b_i``.
    """
    # CONDCONV_PATHS spelled out: TorchScript cannot read a global tuple. The tests run every
    # path of CONDCONV_PATHS through this function.
    if path not in ["auto", "single", "grouped", "matmul", "experts"]:
        raise ValueError(
            "unknown CondConv2d path '{}'; expected 'auto', 'single', 'grouped', 'matmul' or "
            "'experts'".format(path)
        )
    if x.shape[0] == 0:
        # An empty batch has no kernel to mix, and folded into groups it would make zero
        # groups. The experts path needs neither and still ties every weight to the (empty)
        # output, so that backward gives zero gradients, as nn.Conv2d's does.
        path = "experts"
    elif x.shape[0] == 1 and (path == "auto" or path == "single") and not torch.jit.is_scripting():
        # A batch of one in inference, the commonest call: the same operators, fewer steps.
        out = fast.single_native_conv2d(
            x, routing_weights, weight, bias, stride, padding, dilation, groups, path
        )
        if out is not None:
            return out
    if path == "auto":
        path = fast.auto_path(x, weight, stride, padding, dilation)
    if path == "experts":
        return fast.experts_conv2d(
            x, routing_weights, weight, bias, stride, padding, dilation, groups
        )
    if path == "matmul" and not torch.jit.is_scripting():
        blocks = fast.matmul_blocks(routing_weights, weight, groups)
        if blocks > 1:  # large batched kernels on the CPU, mixed a block at a time
            return fast.blocked_matmul_conv2d(
                x, routing_weights, weight, bias, stride, padding, dilation, blocks
            )

    kernels, biases = _mix_kernels(routing_weights, weight, bias)
    return _conv_mixed(
        x, kernels, biases, list(weight.shape[1:]), stride, padding, dilation, groups, path
    )


def _conv_mixed(
    x: torch.Tensor,
    kernels: torch.Tensor,
    biases: Optional[torch.Tensor],
    kernel_shape: List[int],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
    path: str,
    normalize: bool = False,
) -> torch.Tensor:
    """Each example convolved with its mixed kernel, on ``path`` ("single", "matmul" or
    "grouped"): ``kernels`` (B, O, C/g, kh, kw), ``biases`` (B, O) or None, ``kernel_shape`` the
    experts' (O, C/g, kh, kw), constants in a traced graph unlike the sizes of ``kernels``.
    ``normalize`` scales every example's kernel to unit norm per output channel first and takes
    the "grouped" path ("matmul" where the call is recorded for other batch sizes)."""
    if normalize:
        norms = kernels.flatten(2).square().sum(dim=2)
        rsqrt = torch.rsqrt(norms + 1e-12)
        kernels = kernels * rsqrt.reshape(norms.shape[0], norms.shape[1], 1, 1, 1)
        path = "grouped"
        if not torch.jit.is_scripting():
            if fast.records_graph():
                # As "auto" does: the grouped convolution would fix the batch size in the graph.
                path = "matmul"
    if path == "matmul":
        kernel_size = (kernel_shape[2], kernel_shape[3])
        return fast.matmul_conv2d(
            x, kernels, biases, kernel_size, stride, padding, dilation, groups
        )
    if path == "single":
        batch = x.shape[0]
        if batch != 1:
            raise ValueError(
                "CondConv2d path 'single' needs a batch of one, got {}; path 'auto' takes any "
                "batch (it picks 'single' for a batch of one, and a batch-independent path "
                "under tracing and export)".format(batch)
            )
        # Views of the batch of one, not kernels[0]: the backward of indexing would zero-fill
        # and copy a whole kernel gradient, that of a reshape is a view (docs/performance.md).
        b0: Optional[torch.Tensor] = None
        if biases is not None:
            b0 = biases.reshape(kernel_shape[0])
        kernel = kernels.reshape(kernel_shape)
        return F.conv2d(x, kernel, b0, stride, padding, dilation, groups)
    return _grouped_conv2d(x, kernels, biases, stride, padding, dilation, groups)


def _mix_kernels(
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    in_weight_dtype: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Each example's kernel ``sum_i r[b, i] W_i`` and bias ``sum_i r[b, i] b_i``.

    Args:
        routing_weights: (B, E); weight: (E, O, C/g, kh, kw); bias: (E, O) or None.
        in_weight_dtype: under autocast, mix in the weights' dtype, not the autocast dtype
            (see :func:`._condconv_fast.mix_eager`).

    Returns:
        Kernels (B, O, C/g, kh, kw) and biases (B, O) or None, in the wider of the routing's and
        the weights' dtypes (float32 for experts stored in bfloat16).
    """
    batch, num_experts = routing_weights.shape[0], weight.shape[0]
    flat = weight.reshape(num_experts, -1)
    if torch.jit.is_scripting():
        # In the wider of the two dtypes: experts stored in bfloat16 are mixed in the routing's
        # float32 (CondConv2d.reduced_precision_experts).
        dtype = torch.promote_types(routing_weights.dtype, flat.dtype)
        routing_weights = routing_weights.to(dtype)
        kernels = torch.mm(routing_weights, flat.to(dtype))
        biases: Optional[torch.Tensor] = None
        if bias is not None:
            biases = torch.mm(routing_weights, bias.to(dtype))
    else:
        # The same products, with the CPU's fast batch-1 mix and the autocast rule.
        kernels, biases = fast.mix_eager(routing_weights, flat, bias, in_weight_dtype)
    return kernels.reshape([batch] + list(weight.shape[1:])), biases


def _grouped_conv2d(
    x: torch.Tensor,
    kernels: torch.Tensor,
    biases: Optional[torch.Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Each example convolved with its own kernel, the batch folded into the groups of one
    grouped convolution: ``kernels`` (B, O, C/g, kh, kw), ``biases`` (B, O) or None."""
    batch, channels, height, width = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    out_channels = kernels.shape[1]
    folded_bias: Optional[torch.Tensor] = None
    if biases is not None:
        folded_bias = biases.reshape(batch * out_channels)
    out = F.conv2d(
        x.reshape(1, batch * channels, height, width),
        kernels.reshape(batch * out_channels, kernels.shape[2], kernels.shape[3], kernels.shape[4]),
        folded_bias,
        stride,
        padding,
        dilation,
        groups * batch,
    )
    return out.reshape(batch, out_channels, out.shape[2], out.shape[3])


def _normalized_cond_conv2d(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """:func:`cond_conv2d` with every example's mixed kernel scaled to unit norm per output
    channel (``CondConv2d(normalize_kernel=True)``); args as there."""
    # Under autocast, the mix and the norms in the autocast dtype.
    kernels, biases = _mix_kernels(routing_weights, weight, bias, in_weight_dtype=False)
    return _conv_mixed(
        x,
        kernels,
        biases,
        list(weight.shape[1:]),
        stride,
        padding,
        dilation,
        groups,
        "grouped",
        True,
    )


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
        static_weight: (out_channels, in_channels // groups, kh, kw) or None. With
            ``static_kernel=True`` every example's kernel is ``static_weight + sum_i r_i W_i``
            (and its bias ``static_bias + sum_i r_i b_i``): a static kernel plus a routed
            residual, whose experts start at zero so that the layer starts as a plain conv
            (Li et al., "Revisiting Dynamic Convolution via Matrix Decomposition", ICLR 2021,
            argue for a static kernel beside the dynamic part).
        normalize_kernel: scale every example's mixed kernel to unit L2 norm per output channel
            before convolving (the direction of the kernel is routed, not its gain). Routing
            then cannot give one example's features another scale than another's, which batch
            norm, with statistics over the batch, cannot undo. Computed on the "grouped" path
            (on "matmul" when traced or exported) whatever ``path`` says.
        reduced_precision_experts: True once :func:`.store_experts_in` has stored ``weight``
            (and ``static_weight``) in bfloat16 or int8 for inference: half or a quarter of the
            bytes to read, mixed into float32 kernels (float32 routing, float32 accumulation).
            Such a layer refuses to run in training mode.
        weight_scale: (out_channels,) float32 for int8 experts, else None: output channel ``c``
            of every expert is ``weight_scale[c] * weight[:, c]``. One scale per output channel
            shared by the experts, so the mix stays one product of the int8 experts and the
            scales apply to the mixed kernel or to the convolution's output, whichever is
            smaller (at batch 1 on small maps, the output).
        static_weight_scale: the same for an int8 ``static_weight``, its own scales.
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
        "normalize_kernel",
        "reduced_precision_experts",
    ]
    _pre_pad: List[int]
    weight_scale: Optional[torch.Tensor]
    static_weight_scale: Optional[torch.Tensor]
    _min_input_size: Tuple[int, int]

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
        static_kernel: bool = False,
        normalize_kernel: bool = False,
    ):
        super().__init__()
        owner = type(self).__name__
        in_channels = check_integer(owner, "in_channels", in_channels, 1)
        out_channels = check_integer(owner, "out_channels", out_channels, 1)
        groups = check_integer(owner, "groups", groups, 1)
        num_experts = check_integer(owner, "num_experts", num_experts, 1)
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % groups != 0:
                raise ValueError(
                    f"{owner}: {name} ({channels}) must be divisible by groups ({groups})"
                )
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                f"{owner}: padding_mode must be 'zeros', 'reflect', 'replicate' or "
                f"'circular', got {padding_mode!r}"
            )
        if path not in CONDCONV_PATHS:
            raise ValueError(f"{owner}: path must be one of {CONDCONV_PATHS}, got {path!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = check_pair(owner, "kernel_size", kernel_size, 1)
        self.stride = check_pair(owner, "stride", stride, 1)
        self.dilation = check_pair(owner, "dilation", dilation, 1)
        self.groups = groups
        self.num_experts = num_experts
        self.padding_mode = padding_mode
        self.path = path
        self.normalize_kernel = bool(normalize_kernel)
        self.reduced_precision_experts = False
        # Padding is resolved here to (top, bottom, left, right) so that forward only sees
        # ints: symmetric zero padding goes to the convolution itself, anything else is applied
        # with F.pad first.
        pads = resolve_padding(owner, padding, self.kernel_size, self.stride, self.dilation)
        # For the repr and expert_conv: 'same' or 'valid' as given, anything else as a pair.
        self._padding_arg = padding if isinstance(padding, str) else (pads[0], pads[2])
        if padding_mode == "zeros" and pads[0] == pads[1] and pads[2] == pads[3]:
            self.padding = (pads[0], pads[2])
            self._pre_pad = []
        else:
            self.padding = (0, 0)
            self._pre_pad = [pads[2], pads[3], pads[0], pads[1]]  # F.pad order: W then H
        # The smallest input (H, W) that the kernel fits in once padded, and at least a pixel:
        # nn.Conv2d refuses an input without pixels too.
        extent = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)]
        self._min_input_size = (
            max(extent[0] - pads[0] - pads[1], 1),
            max(extent[1] - pads[2] - pads[3], 1),
        )

        factory = {"device": device, "dtype": dtype}
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(
            torch.empty((num_experts, out_channels, in_channels // groups, kh, kw), **factory)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty((num_experts, out_channels), **factory))
        else:
            self.register_parameter("bias", None)
        self.register_parameter("static_weight", None)
        self.register_parameter("static_bias", None)
        # Set by store_experts_in for int8 experts (see the class docstring).
        self.register_buffer("weight_scale", None)
        self.register_buffer("static_weight_scale", None)
        if static_kernel:
            self.static_weight = nn.Parameter(torch.empty(self.weight.shape[1:], **factory))
            if bias:
                self.static_bias = nn.Parameter(torch.empty((out_channels,), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialises every expert as ``nn.Conv2d`` initialises a kernel of the expert's shape;
        with a static kernel, that kernel so, and the experts at zero.

        Initialising the stacked 5-D tensor at once would compute fan-in/fan-out from the wrong
        dimensions (e.g. fvcore's ``c2_msra_fill`` takes dim 0, the experts, as fan-out).
        """
        fan_in = (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        if self.static_weight is not None:
            nn.init.kaiming_uniform_(self.static_weight, a=math.sqrt(5))
            nn.init.zeros_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            if self.static_bias is not None:
                nn.init.uniform_(self.static_bias, -bound, bound)
            return
        for expert in range(self.num_experts):
            nn.init.kaiming_uniform_(self.weight[expert], a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def add_static_kernel(self) -> "CondConv2d":
        """Turns the layer into a static kernel plus zero-initialised routed experts (see
        ``static_weight``), in place: the static kernel takes expert 0's values (each expert was
        initialised as a plain conv, so the layer now starts as one), every expert becomes zero.
        A layer that has a static kernel already is left alone. Returns the layer."""
        if self.static_weight is not None:
            return self
        with torch.no_grad():
            trainable = self.weight.requires_grad
            self.static_weight = nn.Parameter(self.weight[0].detach().clone(), trainable)
            self.weight.zero_()
            if self.bias is not None:
                self.static_bias = nn.Parameter(self.bias[0].detach().clone(), trainable)
                self.bias.zero_()
        return self

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, H, W), floating point; B may be 0, as for ``nn.Conv2d``.
            routing_weights: (B, num_experts), floating point (cast to the weights' dtype), on
                the device of ``x``.

        Returns:
            (B, out_channels, H', W').
        """
        return self._conv_forward(x, routing_weights)

    def _conv_forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            # A batch of one in inference, the commonest call: one native call, which also
            # checks the arguments (None where anything is off, so the checks below name it).
            out = self._single_forward(x, routing_weights)
            if out is not None:
                return out
        # One combined test on the fast path; the messages are built only on failure.
        if (
            not isinstance(x, torch.Tensor)
            or not isinstance(routing_weights, torch.Tensor)
            or x.dim() != 4
            or routing_weights.dim() != 2
            or not x.is_floating_point()
            or not routing_weights.is_floating_point()
        ):
            raise_bad_input(
                x, routing_weights, self.in_channels, self.num_experts, self._min_input_size
            )
        x_shape, routing_shape = x.shape, routing_weights.shape
        if (
            x_shape[1] != self.in_channels
            or x_shape[2] < self._min_input_size[0]
            or x_shape[3] < self._min_input_size[1]
            or routing_shape[0] != x_shape[0]
            or routing_shape[1] != self.num_experts
            or routing_weights.device != x.device
        ):
            raise_bad_input(
                x, routing_weights, self.in_channels, self.num_experts, self._min_input_size
            )
        if len(self._pre_pad) > 0:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._pre_pad, mode=mode)
        if self.reduced_precision_experts:
            if self.training:
                raise RuntimeError(
                    "CondConv2d: the experts are stored in bfloat16 or int8 for inference "
                    "(store_experts_in); call model.eval(), or store_experts_in(model, "
                    "torch.float32) to train"
                )
            # The kernels are mixed in float32 from the narrow experts (see _mix_kernels).
            routing_weights = routing_weights.to(torch.float32)
            weight_scale = self.weight_scale
            if weight_scale is not None:
                return self._int8_forward(x, routing_weights, weight_scale)
        weight, bias = self.weight, self.bias
        if not self.reduced_precision_experts and routing_weights.dtype != weight.dtype:
            routing_weights = routing_weights.to(weight.dtype)
        static_weight = self.static_weight
        if static_weight is not None:
            # The static kernel is one more expert, routed with weight 1 for every example.
            ones = torch.ones_like(routing_weights[:, :1])
            routing_weights = torch.cat([ones, routing_weights], dim=1)
            weight = torch.cat([static_weight.unsqueeze(0), weight], dim=0)
            static_bias = self.static_bias
            if bias is not None and static_bias is not None:
                bias = torch.cat([static_bias.unsqueeze(0), bias], dim=0)
        # An empty batch has no kernel to normalise; cond_conv2d takes it.
        if self.normalize_kernel and x.shape[0] > 0:
            return _normalized_cond_conv2d(
                x,
                routing_weights,
                weight,
                bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
        return cond_conv2d(
            x,
            routing_weights,
            weight,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.path,
        )

    @torch.jit.unused
    def _single_forward(
        self, x: torch.Tensor, routing_weights: torch.Tensor
    ) -> Optional[torch.Tensor]:
        """What ``cond_conv2d`` computes for a batch of one on the "single" path, by the native
        call of :func:`._condconv_fast.single_native_conv2d` (which checks the arguments), for a
        layer that adds nothing to it (no padding of its own, float32 experts, no static kernel,
        no kernel normalisation); else None."""
        if (
            fast._native_single is None
            or self.reduced_precision_experts
            or self.normalize_kernel
            or len(self._pre_pad) > 0
            or self.static_weight is not None
        ):
            return None
        return fast.single_native_conv2d(
            x,
            routing_weights,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.path,
        )

    def _int8_forward(
        self, x: torch.Tensor, routing_weights: torch.Tensor, weight_scale: torch.Tensor
    ) -> torch.Tensor:
        """The layer with int8 experts ``q_i`` and output-channel scales ``s``: each example's
        kernel ``s * sum_i r_i q_i`` (plus the static kernel ``s_0 q_0``), mixed into float32.
        The scales multiply whichever is smaller per output channel, the mixed kernel or the
        convolution's output (with the static kernel mixed in as ``(s_0 / s) q_0``); at batch 1
        on the small maps of a network's last blocks, the output. Equal to the float32 layer
        with the dequantized experts up to the order of the sums."""
        kernel_shape = list(self.weight.shape[1:])
        out_channels = kernel_shape[0]
        if x.shape[0] == 0:
            # Nothing to mix: a kernel of zeros gives the empty batch its output shape.
            zeros = torch.zeros(kernel_shape, dtype=torch.float32, device=x.device)
            return F.conv2d(x, zeros, None, self.stride, self.padding, self.dilation, self.groups)
        kernels, biases = _mix_kernels(routing_weights, self.weight, self.bias)
        static_bias = self.static_bias
        if biases is not None and static_bias is not None:
            biases = biases + static_bias.unsqueeze(0)
        static_weight = self.static_weight
        static_scale = self.static_weight_scale
        kh, kw = kernel_shape[2], kernel_shape[3]
        out_h = fast.conv_out_size(
            x.shape[2], kh, self.stride[0], self.padding[0], self.dilation[0]
        )
        out_w = fast.conv_out_size(
            x.shape[3], kw, self.stride[1], self.padding[1], self.dilation[1]
        )
        channel_scale = weight_scale.reshape(1, out_channels, 1, 1, 1)
        path = self.path
        if path == "auto":
            path = fast.auto_path(x, self.weight, self.stride, self.padding, self.dilation)
        if path == "experts":
            # The int8 experts are mixed once rather than convolved one by one.
            path = "grouped"
        # The scales go on the kernel where it is the smaller (or is normalised, which needs it
        # whole), else on the output, the static kernel then mixed in relative to them.
        on_kernel = self.normalize_kernel or out_h * out_w >= kernel_shape[1] * kh * kw
        if on_kernel:
            if kernels.requires_grad:
                kernels = kernels * channel_scale
            else:
                kernels = kernels.mul_(channel_scale)  # the mix's own fresh tensor
        if static_weight is not None and static_scale is not None:
            static_factor = static_scale if on_kernel else static_scale / weight_scale
            static = static_weight.to(torch.float32) * static_factor.reshape(-1, 1, 1, 1)
            kernels = kernels + static.unsqueeze(0)
        out = _conv_mixed(
            x,
            kernels,
            biases if on_kernel else None,
            kernel_shape,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            path,
            self.normalize_kernel,
        )
        if on_kernel:
            return out
        out = out * weight_scale.reshape(1, out_channels, 1, 1)
        if biases is not None:
            out = out + biases.reshape(biases.shape[0], out_channels, 1, 1)
        return out

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Experts saved in another store than this layer's (float32 into int8, int8 into
        # float32) are converted first: copied as they are, int8 values would load as floats.
        from .expert_storage import convert_saved_experts  # it imports this module

        convert_saved_experts(self, state_dict, prefix, error_msgs)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
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
            dtype=torch.float32 if self.weight_scale is not None else self.weight.dtype,
        )
        with torch.no_grad():
            kernel = self.weight[expert]
            if self.weight_scale is not None:  # int8: dequantized
                kernel = kernel.float() * self.weight_scale.reshape(-1, 1, 1, 1)
            conv.weight.copy_(kernel)
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
        if self.static_weight is not None:
            s += ", static_kernel=True"
        if self.normalize_kernel:
            s += ", normalize_kernel=True"
        if self.reduced_precision_experts:
            s += f", experts in {str(self.weight.dtype).replace('torch.', '')}"
        return s

"""Conditionally parameterized convolution (CondConv).

Yang, Bender, Le, Ngiam, "CondConv: Conditionally Parameterized Convolutions for Efficient
Inference", NeurIPS 2019. A CondConv layer holds ``E`` expert kernels ``W_1 .. W_E`` of one
ordinary convolution's shape and convolves each example ``b`` with its own kernel

    W(x_b) = sum_i r[b, i] * W_i,

where ``r`` are routing weights computed from the example (see :mod:`.routing`). Because the
convolution is linear this equals a mixture of ``E`` convolutions, at the cost of one.

This module is pure PyTorch: it imports nothing from detectron2.
"""

import contextlib
import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_integer, check_pair

__all__ = ["CondConv2d", "cond_conv2d", "CONDCONV_PATHS"]

# Ways to compute the same result; "auto" picks one per call from the shapes.
#   single:  batch of one; one plain convolution with the example's mixed kernel.
#   grouped: per-example kernels, the batch folded into the groups of one grouped convolution.
#   matmul:  batched matrix product with the per-example kernels; for 1x1 kernels directly on
#            the input, for larger kernels on its unfolded patches (im2col). The batch size is
#            never baked into the graph, so "auto" takes it whenever the call is recorded for
#            other batch sizes: TorchScript tracing, ONNX export (either exporter), torch.export.
#   experts: no kernel mix; one convolution with all E experts side by side (E x the output
#            channels), then the E outputs mixed per example. E x the conv's multiply-adds, but
#            it reads each expert once and writes no mixed kernel: the fastest when batch x
#            output pixels is tiny (SSD's last extra layers), where the mix is the whole cost.
CONDCONV_PATHS = ("auto", "single", "grouped", "matmul", "experts")

_IntOrPair = Union[int, Tuple[int, int]]


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
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        # A plain product: scriptable, and an ordinary op in traced and exported graphs.
        mixed = torch.mm(routing_weights, flat)
    else:
        mixed = _mix_eager(routing_weights, flat)
    return mixed.reshape([batch] + list(stacked.shape[1:]))


@torch.jit.unused
def _records_graph() -> bool:
    """Whether this call is recorded into a graph that is to run at other batch sizes: a
    TorchScript trace, an ONNX export (either exporter) or ``torch.export``. Not under
    ``torch.compile``, which guards on the shapes it saw and recompiles for others."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


@torch.jit.unused
def _mix_eager(routing_weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    numel = flat.shape[1]
    needs_grad = torch.is_grad_enabled() and (routing_weights.requires_grad or flat.requires_grad)
    # With a backward the split pays off only on larger mixes (tools/benchmark_layer.py, batch-1
    # training step, 8 experts: timm's plain product 7.8 ms vs our split 9.1 ms for
    # MobileNetV2's 960->320 1x1, 307k weights per expert; the split wins from ResNet-50's
    # 256->256 3x3, 590k, on: 10.9 vs 11.6 ms).
    threshold = _SPLIT_MIX_NUMEL * (_SPLIT_MIX_GRAD_FACTOR if needs_grad else 1)
    split = routing_weights.shape[0] == 1 and numel >= threshold
    if not split or numel % _SPLIT_MIX_CHUNKS != 0:
        # One product; autograd's own backward for it is as good as any.
        return torch.mm(routing_weights, flat)
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        # The compiler sees through plain ops and fuses them; it gains nothing from our backward.
        return torch.mm(routing_weights, flat)
    if needs_grad:
        return _MixExperts.apply(routing_weights, flat)
    return _mix_split(routing_weights, flat)


class _MixExperts(torch.autograd.Function):
    """``routing_weights @ flat`` for batch 1, split into column blocks (:func:`_mix_split`).

    The backward writes the expert gradient with one product, straight into an ``(E, P)`` tensor:
    autograd's backward of the split forward would produce it block-major and copy it back,
    which doubles the largest memory traffic of a training step (one more ``E x P`` buffer,
    freshly page-faulted on every call where it exceeds the allocator's mmap threshold).
    """

    @staticmethod
    def forward(ctx, routing_weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(routing_weights, flat)
        return _mix_split(routing_weights, flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        routing_weights, flat = ctx.saved_tensors
        grad_routing: Optional[torch.Tensor] = None
        grad_flat: Optional[torch.Tensor] = None
        if ctx.needs_input_grad[0]:
            grad_routing = torch.mm(grad, flat.t())  # (B, P) x (P, E)
        if ctx.needs_input_grad[1]:
            grad_flat = torch.mm(routing_weights.t(), grad)  # (E, B) x (B, P)
        return grad_routing, grad_flat


def _mix_split(routing_weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """(1, E) x (E, P) -> (1, P) as a batch of column blocks; P divisible by the block count.

    At batch 1 the mix is a matrix-vector product bound by reading the experts; as one
    (1, E) x (E, P) product it does not keep both CPU threads reading (measured: 4.0 ms vs
    3.2 ms for 8 experts of a 512->512 3x3 conv, tools/benchmark_layer.py machine). The same
    product as a batch of column blocks does.
    """
    num_experts, numel = flat.shape
    chunks = _SPLIT_MIX_CHUNKS
    blocks = flat.reshape(num_experts, chunks, numel // chunks).transpose(0, 1)
    mixed = torch.bmm(routing_weights.expand(chunks, 1, num_experts), blocks)
    return mixed.reshape(1, numel)


# Batch-1 mixes of at least this many elements per expert are split into column blocks.
_SPLIT_MIX_NUMEL = 1 << 18
# ... and, when a backward follows, of at least this many times as many.
_SPLIT_MIX_GRAD_FACTOR = 2
_SPLIT_MIX_CHUNKS = 8


def _mix_kernels(
    routing_weights: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-example kernels (B, O, C/g, kh, kw) and biases (B, O) or None."""
    kernels = _mix(routing_weights, weight)
    biases: Optional[torch.Tensor] = None
    if bias is not None:
        biases = torch.mm(routing_weights, bias)
    return kernels, biases


@torch.jit.unused
def _mix_kernels_eager(
    routing_weights: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`_mix_kernels`, in the weights' own dtype even under autocast.

    Autocast would run the mixing products in bfloat16/float16, casting all E experts first:
    more memory traffic than mixing in float32 (one read of the float32 experts) and a rounded
    sum. So the mix is float32 (the dtype of the weights) and the convolution that follows
    casts the one mixed kernel per example to the autocast dtype.
    """
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return _mix_kernels(routing_weights.to(weight.dtype), weight, bias)
    return _mix_kernels(routing_weights, weight, bias)


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
        path: one of :data:`CONDCONV_PATHS`; all give the same result up to rounding. An empty
            batch (B = 0) takes "experts", whatever ``path`` says.

    Returns:
        (B, O, H', W'): for each example b, ``conv2d(x[b], sum_i r[b, i] W_i) + sum_i r[b, i] b_i``.
    """
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
    elif path == "auto":
        path = _auto_path(x, weight, stride, padding, dilation)
    if path == "experts":
        return _experts_conv2d(x, routing_weights, weight, bias, stride, padding, dilation, groups)
    if path == "matmul":
        return _matmul_conv2d(x, routing_weights, weight, bias, stride, padding, dilation, groups)
    batch = x.shape[0]
    out_channels = weight.shape[1]
    kh, kw = weight.shape[3], weight.shape[4]
    if torch.jit.is_scripting():
        kernels, biases = _mix_kernels(routing_weights, weight, bias)
    else:
        kernels, biases = _mix_kernels_eager(routing_weights, weight, bias)

    if path == "single":
        if batch != 1:
            raise ValueError(
                "CondConv2d path 'single' needs a batch of one, got {}; path 'auto' takes any "
                "batch (it picks 'single' for a batch of one, and a batch-independent path "
                "under tracing and export)".format(batch)
            )
        # Views of the batch of one, not kernels[0]: the backward of indexing would zero-fill a
        # (1, O, C/g, kh, kw) gradient and copy into it (measured: ~15% of a small 1x1 layer's
        # training step); the backward of a reshape is a view.
        b0: Optional[torch.Tensor] = None
        if biases is not None:
            b0 = biases.reshape(out_channels)
        kernel = kernels.reshape(out_channels, kernels.shape[2], kh, kw)
        return F.conv2d(x, kernel, b0, stride, padding, dilation, groups)

    return _grouped_conv2d(x, kernels, biases, stride, padding, dilation, groups)


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
    kernels, biases = _mix_kernels(routing_weights, weight, bias)
    norms = kernels.flatten(2).square().sum(dim=2)
    kernels = kernels * torch.rsqrt(norms + 1e-12).reshape(norms.shape[0], norms.shape[1], 1, 1, 1)
    if not torch.jit.is_scripting():
        if _records_graph():
            # As "auto" does: the grouped convolution would fix the batch size in the graph.
            kh, kw = weight.shape[3], weight.shape[4]  # constants in a trace, unlike kernels'
            cols, out_h, out_w = _patches(x, kh, kw, stride, padding, dilation, groups)
            out = _apply_kernels(cols, kernels, biases, groups)
            return out.reshape(x.shape[0], weight.shape[1], out_h, out_w)
    return _grouped_conv2d(x, kernels, biases, stride, padding, dilation, groups)


def _matmul_conv2d(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """The "matmul" path: per-example kernels times the input (1x1) or its patches (im2col).

    Args and returns as :func:`cond_conv2d`.
    """
    batch, out_channels = x.shape[0], weight.shape[1]
    kh, kw = weight.shape[3], weight.shape[4]
    cols, out_h, out_w = _patches(x, kh, kw, stride, padding, dilation, groups)
    if not torch.jit.is_scripting() and not torch.jit.is_tracing() and groups == 1:
        blocks = _matmul_blocks(routing_weights, weight)
        if blocks > 1:
            out = _blocked_matmul(cols, routing_weights, weight, bias, blocks)
            return out.reshape(batch, out_channels, out_h, out_w)

    if torch.jit.is_scripting():
        kernels, biases = _mix_kernels(routing_weights, weight, bias)
    else:
        kernels, biases = _mix_kernels_eager(routing_weights, weight, bias)
    out = _apply_kernels(cols, kernels, biases, groups)
    return out.reshape(batch, out_channels, out_h, out_w)


def _patches(
    x: torch.Tensor,
    kh: int,
    kw: int,
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
) -> Tuple[torch.Tensor, int, int]:
    """The input as columns for a kh x kw kernel: (B * groups, C/g * kh * kw, L), channels
    outermost as in a kernel's (C/g, kh, kw) layout, and the output size (H', W'), L = H' * W'.
    A 1x1 kernel takes the input itself (padded and strided), anything else its unfolded patches."""
    batch, channels, height, width = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    out_h = _conv_out_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = _conv_out_size(width, kw, stride[1], padding[1], dilation[1])
    if kh == 1 and kw == 1:
        if padding[0] > 0 or padding[1] > 0:
            x = F.pad(x, [padding[1], padding[1], padding[0], padding[0]])
        if stride[0] > 1 or stride[1] > 1:
            x = x[:, :, :: stride[0], :: stride[1]]
        cols = x.reshape(batch * groups, channels // groups, out_h * out_w)
    else:
        cols = F.unfold(x, [kh, kw], dilation=dilation, padding=padding, stride=stride)
        cols = cols.reshape(batch * groups, channels // groups * kh * kw, out_h * out_w)
    return cols, out_h, out_w


def _apply_kernels(
    cols: torch.Tensor, kernels: torch.Tensor, biases: Optional[torch.Tensor], groups: int
) -> torch.Tensor:
    """Per-example kernels (B, O, C/g, kh, kw) and biases (B, O) or None applied to the columns
    of :func:`_patches`: (B * groups, O/g, L)."""
    batch, out_channels = kernels.shape[0], kernels.shape[1]
    patch = kernels.shape[2] * kernels.shape[3] * kernels.shape[4]
    # Every size spelled out: with -1 an empty batch (a traced graph runs on any batch) would be
    # ambiguous.
    kernels = kernels.reshape(batch * groups, out_channels // groups, patch)
    if biases is not None:
        # The bias rides in the product (beta * input + A @ B): no second pass over the output.
        bias_cols = biases.reshape(batch * groups, out_channels // groups, 1)
        return torch.baddbmm(bias_cols, kernels, cols)
    return torch.bmm(kernels, cols)


def _matmul_blocks(routing_weights: torch.Tensor, weight: torch.Tensor) -> int:
    """How many output-channel blocks keep each block's mixed kernels under the block budget."""
    if torch.compiler.is_compiling():
        return 1  # the compiler plans its own buffers; a Python loop would only unroll
    kernel_bytes = routing_weights.shape[0] * weight[0].numel() * weight.element_size()
    return min(weight.shape[1], -(-kernel_bytes // _MATMUL_BLOCK_BYTES))


@torch.jit.unused
def _blocked_matmul(
    cols: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    blocks: int,
) -> torch.Tensor:
    """Mix and apply the per-example kernels one block of output channels at a time.

    Materialising all ``B`` mixed kernels at once costs ``B x`` a kernel of memory, written by
    the mix and read back by the product (75 MB at batch 8 for ResNet-50's 512->512 3x3 conv):
    past glibc's mmap threshold (32 MB at most) such a buffer is mapped afresh and page-faulted
    on every call, and it never stays in cache. In blocks, each expert is still read once, the
    block's kernels stay small (one reused, cache-sized buffer) and the gradient of the experts
    is assembled once by the chunking's backward.

    Args:
        cols: (B, C*kh*kw, L), groups == 1.
        routing_weights: (B, E); weight: (E, O, C, kh, kw); bias: (E, O) or None.

    Returns:
        (B, O, L).
    """
    batch, num_experts = routing_weights.shape
    device_type = weight.device.type
    autocast = torch.is_autocast_enabled(device_type)
    weight_blocks = weight.chunk(blocks, dim=1)
    bias_blocks = bias.chunk(blocks, dim=1) if bias is not None else [None] * len(weight_blocks)
    outs = []
    for weight_block, bias_block in zip(weight_blocks, bias_blocks):
        # The mix in the weights' dtype, as in _mix_kernels_eager.
        with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
            routing = routing_weights.to(weight.dtype)
            kernels = torch.mm(routing, weight_block.reshape(num_experts, -1))
            biases = torch.mm(routing, bias_block) if bias_block is not None else None
        kernels = kernels.reshape(batch, weight_block.shape[1], -1)
        if biases is not None:
            outs.append(torch.baddbmm(biases.unsqueeze(2), kernels, cols))
        else:
            outs.append(torch.bmm(kernels, cols))
    return torch.cat(outs, dim=1)


# The matmul path mixes kernels in blocks of output channels of at most about this many bytes.
_MATMUL_BLOCK_BYTES = 8 << 20


def _experts_conv2d(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """The "experts" path: ``sum_i r[b, i] * conv2d(x_b, W_i)``, by linearity equal to the mix.

    Args and returns as :func:`cond_conv2d`.
    """
    num_experts, out_channels = weight.shape[0], weight.shape[1]
    per_group = out_channels // groups
    # All experts as one conv with E x the output channels, ordered (group, expert, channel)
    # so that each group's experts see that group's inputs. With groups == 1 this is a view.
    kernel_shape = list(weight.shape[2:])
    stacked = weight.reshape([num_experts, groups, per_group] + kernel_shape)
    stacked = stacked.transpose(0, 1).reshape([groups * num_experts * per_group] + kernel_shape)
    out = F.conv2d(x, stacked, None, stride, padding, dilation, groups)
    batch, out_h, out_w = out.shape[0], out.shape[2], out.shape[3]
    out = out.reshape(batch, groups, num_experts, per_group * out_h * out_w)
    # (B, 1, 1, E) x (B, g, E, O/g * L) -> (B, g, 1, O/g * L)
    out = torch.matmul(routing_weights.reshape(batch, 1, 1, num_experts), out)
    out = out.reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        biases = torch.mm(routing_weights, bias).to(out.dtype)
        out = out + biases.reshape(batch, out_channels, 1, 1)
    return out


def _auto_path(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
) -> str:
    """The path for these shapes; measured on 2 CPU threads, tools/benchmark_layer.py."""
    if not torch.jit.is_scripting():
        # A traced graph must not bake the batch size into the group count, and an exported
        # one not make it symbolic: ONNX's Conv takes its group count as a constant.
        if _records_graph():
            return "matmul"
    if x.shape[0] == 1:
        # One plain convolution: the mixed kernel is read once, as a static conv reads its own.
        return "single"
    groups = x.shape[1] // weight.shape[2]
    if groups > 1:
        # Depthwise and grouped convs: per-example kernels are tiny and the folded grouped
        # convolution is as fast as the static conv; im2col would copy 9x the input for nothing.
        return "grouped"
    kh, kw = weight.shape[3], weight.shape[4]
    if kh == 1 and kw == 1:
        # A 1x1 conv is already a matrix product; the grouped conv would reorder B kernels.
        return "matmul"
    # k x k: the matmul path copies the input's patches (C*kh*kw per output pixel) and its
    # backward folds them back; the grouped conv reorders each example's kernel (O*C*kh*kw).
    # Measured at batch 8: with kernels 10x the patches (ResNet res5 3x3, 512 channels on 7x7)
    # the matmul path is ~2x faster in eval and train; at 1.3x (res4 3x3, 256 on 14x14) the
    # grouped conv is ~1.3x faster. The switch sits between, at 4x (a literal: TorchScript
    # compiles this function and cannot read module globals).
    out_h = _conv_out_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    out_w = _conv_out_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    if weight.shape[1] >= 4 * out_h * out_w:
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
        static_weight: (out_channels, in_channels // groups, kh, kw) or None. With
            ``static_kernel=True`` every example's kernel is ``static_weight + sum_i r_i W_i``
            (and its bias ``static_bias + sum_i r_i b_i``): a static kernel plus a routed
            residual, whose experts start at zero so that the layer starts as a plain conv
            (Li et al., "Revisiting Dynamic Convolution via Matrix Decomposition", ICLR 2021,
            argue for a static kernel beside the dynamic part).
        normalize_kernel: scale every example's mixed kernel to unit L2 norm per output channel
            before convolving (the direction of the kernel is routed, not its gain). Routing
            then cannot give one example's features another scale than another's, which batch
            norm, with statistics over the batch, cannot undo. Computed on the "grouped" /
            "single" paths whatever ``path`` says.
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
    ]
    _pre_pad: List[int]
    _min_input_size: Tuple[int, int]

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
        # Padding is resolved here to (top, bottom, left, right) so that forward only sees
        # ints: symmetric zero padding goes to the convolution itself, anything else is applied
        # with F.pad first.
        pads = self._resolve_padding(padding)
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
        if static_kernel:
            self.static_weight = nn.Parameter(torch.empty(self.weight.shape[1:], **factory))
            if bias:
                self.static_bias = nn.Parameter(torch.empty((out_channels,), **factory))
        self.reset_parameters()

    def _resolve_padding(self, padding: Union[str, _IntOrPair]) -> Tuple[int, int, int, int]:
        owner = type(self).__name__
        kh, kw = self.kernel_size
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0, 0, 0)
            if padding == "same":
                if self.stride != (1, 1):
                    raise ValueError(
                        f"{owner}: padding='same' is not supported for strides > 1 (got stride="
                        f"{self.stride}); give the padding as integers"
                    )
                total_h = self.dilation[0] * (kh - 1)
                total_w = self.dilation[1] * (kw - 1)
                # Extra padding on the bottom/right, as nn.Conv2d does.
                return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
            raise ValueError(f"{owner}: padding must be 'same', 'valid' or ints, got {padding!r}")
        ph, pw = check_pair(owner, "padding", padding, 0)
        return (ph, ph, pw, pw)

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
        # One combined test on the fast path; the messages are built only on failure.
        if (
            not isinstance(x, torch.Tensor)
            or not isinstance(routing_weights, torch.Tensor)
            or x.dim() != 4
            or x.shape[1] != self.in_channels
            or x.shape[2] < self._min_input_size[0]
            or x.shape[3] < self._min_input_size[1]
            or not x.is_floating_point()
            or routing_weights.dim() != 2
            or routing_weights.shape[0] != x.shape[0]
            or routing_weights.shape[1] != self.num_experts
            or not routing_weights.is_floating_point()
            or routing_weights.device != x.device
        ):
            self._raise_bad_input(x, routing_weights)
        if len(self._pre_pad) > 0:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._pre_pad, mode=mode)
        routing_weights = routing_weights.to(self.weight.dtype)
        weight, bias = self.weight, self.bias
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

    def _raise_bad_input(self, x: torch.Tensor, routing_weights: torch.Tensor) -> None:
        for name, value in (("input", x), ("routing_weights", routing_weights)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"CondConv2d expects {name} to be a torch.Tensor, got {type(value).__name__}"
                )
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            hint = ""
            if x.dim() == 3 and x.shape[0] == self.in_channels:
                hint = "; for one example give a batch of one, x.unsqueeze(0)"
            raise ValueError(
                "CondConv2d expects input of shape (B, {}, H, W), got {}{}".format(
                    self.in_channels, list(x.shape), hint
                )
            )
        if x.shape[2] < self._min_input_size[0] or x.shape[3] < self._min_input_size[1]:
            raise ValueError(
                "CondConv2d expects an input of at least (H, W) = {} (the kernel's extent, "
                "dilation included, less the padding), got {}; give a larger input or more "
                "padding".format(self._min_input_size, list(x.shape))
            )
        if not x.is_floating_point():
            raise TypeError(
                "CondConv2d expects a floating-point input, got dtype {}; convert it, e.g. "
                "x.float()".format(x.dtype)
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
        if not routing_weights.is_floating_point():
            raise TypeError(
                "CondConv2d expects floating-point routing_weights, got dtype {}; convert them, "
                "e.g. routing_weights.to(x.dtype)".format(routing_weights.dtype)
            )
        raise ValueError(
            "CondConv2d expects routing_weights on the input's device ({}), got them on {}; "
            "move them with routing_weights.to(x.device)".format(x.device, routing_weights.device)
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
        if self.static_weight is not None:
            s += ", static_kernel=True"
        if self.normalize_kernel:
            s += ", normalize_kernel=True"
        return s

"""The faster ways to compute a CondConv, and when :func:`.condconv.cond_conv2d` takes them.

:mod:`.condconv` holds the plain computation: mix each example's kernel, then convolve. This
module holds what beats it on the CPU, each equal to it up to rounding (the tests compare every
path with a per-example loop):

- :func:`auto_path`: which path ``path="auto"`` takes for a call;
- :func:`mix_eager`: the kernel mix outside TorchScript, in the weights' dtype under autocast;
  for inference at small batches by the native kernel (``condconv_det._C``, which reads the
  experts at the memory bandwidth), and for a large batch of one with a backward to follow, or
  without the native kernel, split into column blocks (:class:`_MixExperts`);
- :func:`mix_narrow`: the float32 mix of experts stored in a narrower dtype, bfloat16 or int8
  (``store_experts_in``), by the native kernel where the package was built with it
  (``condconv_det._C``, widened as read), otherwise upcast in blocks;
- :func:`matmul_conv2d` and :func:`blocked_matmul_conv2d`: the "matmul" path;
- :func:`experts_conv2d`: the "experts" path.

Every threshold is in :data:`TUNING`. They hold for CPU tensors only: on any other device
"auto" takes the plain paths and the mix is one product.
"""

import contextlib
from typing import ContextManager, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F

try:  # the native CPU kernels of the inference mixes, built with the package where it could be
    from condconv_det import _C as _native
except (ImportError, OSError):  # built without it (setup.py), or for another torch
    _native = None

_native_enabled = _native is not None


# The native kernels by the dtype of the experts they mix into float32.
_NATIVE_KERNELS = {torch.float32: "mix_f32", torch.bfloat16: "mix_bf16", torch.int8: "mix_int8"}


def _native_kernel(dtype: torch.dtype):
    """The native mix of experts of ``dtype`` into float32, or None (not built, or built before
    it had that kernel)."""
    name = _NATIVE_KERNELS.get(dtype)
    return None if name is None else getattr(_native, name, None)


def native_mix_available() -> bool:
    """Whether the package was built with its native inference mix (``condconv_det._C``) and it
    is in use (see :func:`native_mix`)."""
    return _native_enabled


@contextlib.contextmanager
def native_mix(enabled: bool) -> Iterator[None]:
    """Within the block the inference mix takes the native kernel (``enabled``, where it was
    built) or the eager one: BLAS's product (or its column blocks) for float32 experts, the
    upcast in blocks for bfloat16 (or int8) ones. What the mix benchmark compares."""
    global _native_enabled
    before = _native_enabled
    _native_enabled = enabled and _native is not None
    try:
        yield
    finally:
        _native_enabled = before


class _Tuning(NamedTuple):
    """The thresholds of the CPU paths.

    Tuned with ``tools/benchmark_layer.py`` on an x86 CPU with 2 threads, float32, torch 2.14;
    the measurements behind each value are in docs/performance.md ("Why the layer has several
    paths"). Other CPUs may want other values; other devices do not use them.

    Attributes:
        native_mix_max_batch: without a backward to follow, a float32 mix of at most this many
            examples takes the native kernel where it was built.
        split_mix_numel: a batch-1 mix of at least this many weights per expert runs as column
            blocks, which keep every thread reading the experts (with a backward to follow, or
            without the native kernel).
        split_mix_grad_factor: with a backward to follow, the split starts at this many times
            ``split_mix_numel``: its backward costs more than one product's.
        split_mix_chunks: the number of column blocks of a split mix.
        matmul_block_bytes: the "matmul" path mixes its per-example kernels in blocks of output
            channels of about this many bytes, small enough to reuse one cached buffer.
        matmul_kernels_per_pixel: at batch > 1, "auto" computes a k x k convolution with
            "matmul" from this many output channels per output pixel on, else with "grouped".
        narrow_mix_block_bytes: experts stored in bfloat16 are upcast for the mix in blocks of
            columns of about this many bytes of float32 experts, small enough to stay cached.
    """

    native_mix_max_batch: int
    split_mix_numel: int
    split_mix_grad_factor: int
    split_mix_chunks: int
    matmul_block_bytes: int
    matmul_kernels_per_pixel: int
    narrow_mix_block_bytes: int


TUNING = _Tuning(
    native_mix_max_batch=8,
    split_mix_numel=1 << 18,
    split_mix_grad_factor=2,
    split_mix_chunks=8,
    matmul_block_bytes=8 << 20,
    matmul_kernels_per_pixel=4,
    narrow_mix_block_bytes=4 << 20,
)


@torch.jit.unused
def records_graph() -> bool:
    """Whether this call is recorded into a graph that is to run at other batch sizes: a
    TorchScript trace, an ONNX export (either exporter) or ``torch.export``. Not under
    ``torch.compile``, which guards on the shapes it saw and recompiles for others."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """The output size of a convolution along one dimension, as ``nn.Conv2d`` documents it."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def auto_path(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    kernels_per_pixel: int = TUNING.matmul_kernels_per_pixel,
) -> str:
    """The path that ``path="auto"`` takes for this call (see :data:`.CONDCONV_PATHS`).

    Args:
        x, weight, stride, padding, dilation: as for :func:`.cond_conv2d`.
        kernels_per_pixel: ``TUNING.matmul_kernels_per_pixel``, an argument because TorchScript
            compiles this function and cannot read module globals.
    """
    if not torch.jit.is_scripting():
        # A traced graph must not bake the batch size into the group count, and an exported
        # one not make it symbolic: ONNX's Conv takes its group count as a constant.
        if records_graph():
            return "matmul"
    return eager_path(x, weight, stride, padding, dilation, kernels_per_pixel)


def eager_path(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    kernels_per_pixel: int = TUNING.matmul_kernels_per_pixel,
) -> str:
    """:func:`auto_path` for a call that no graph records."""
    if x.shape[0] == 1:
        # One plain convolution: the mixed kernel is read once, as a static conv reads its own.
        return "single"
    groups = x.shape[1] // weight.shape[2]
    if groups > 1:
        # Depthwise and grouped convs: per-example kernels are tiny and the folded grouped
        # convolution is as fast as the static conv; im2col would copy kh*kw x the input.
        return "grouped"
    kh, kw = weight.shape[3], weight.shape[4]
    if kh == 1 and kw == 1:
        # A 1x1 conv is already a matrix product; the grouped conv would reorder B kernels.
        # On a GPU as well: one batched product took 0.5-0.7x the grouped conv's time at batch
        # 8, forward and backward (docs/performance.md, "On a GPU").
        return "matmul"
    if x.device.type != "cpu":
        # The threshold below is measured on the CPU only; elsewhere the plain grouped conv.
        return "grouped"
    # k x k: the matmul path copies the input's patches (C*kh*kw per output pixel) and its
    # backward folds them back; the grouped conv reorders each example's kernel (O*C*kh*kw).
    # So the matmul path wins where the kernels outweigh the patches enough.
    out_h = conv_out_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    out_w = conv_out_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    if weight.shape[1] >= kernels_per_pixel * out_h * out_w:
        return "matmul"
    return "grouped"


@torch.jit.unused
def mix_eager(
    routing_weights: torch.Tensor,
    flat: torch.Tensor,
    bias: Optional[torch.Tensor],
    in_weight_dtype: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The kernel and bias mix outside TorchScript.

    With ``in_weight_dtype``, the mix runs in the weights' dtype even under autocast. Autocast
    would run the products in bfloat16/float16, casting all E experts first: more memory
    traffic than one read of the float32 experts, and a rounded sum. The convolution that
    follows casts the one mixed kernel per example to the autocast dtype instead.

    Args:
        routing_weights: (B, E).
        flat: (E, P), each expert's kernel flattened.
        bias: (E, O) or None.
        in_weight_dtype: mix in :func:`mix_dtype` (the weights' dtype, or the routing's if
            wider) under autocast, not in the autocast dtype.

    Returns:
        ``routing_weights @ flat``, (B, P), and ``routing_weights @ bias``, (B, O), or None,
        in :func:`mix_dtype`.
    """
    device_type = flat.device.type
    if in_weight_dtype and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return mix_eager(routing_weights, flat, bias, False)
    routing_weights = routing_weights.to(mix_dtype(routing_weights, flat))
    mixed = _mix_rows(routing_weights, flat)
    biases: Optional[torch.Tensor] = None
    if bias is not None:
        biases = torch.mm(routing_weights, bias.to(routing_weights.dtype))
    return mixed, biases


def mix_dtype(routing_weights: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the kernel mix: the wider of the routing's and the weights' (float32 for
    bfloat16 experts under float32 routing: ``CondConv2d.reduced_precision_experts``)."""
    return torch.promote_types(routing_weights.dtype, weight.dtype)


def _mix_rows(routing_weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``routing_weights @ flat``, (B, E) x (E, P), in the routing's dtype. On the CPU: without
    a backward to follow, a float32 mix of a small batch by the native kernel (it reads the
    experts at the memory bandwidth, BLAS's product at 60-85% of it); a large batch of one
    otherwise in column blocks (:func:`_mix_split`). Experts in a narrower dtype than the
    routing's (bfloat16 under float32) go to :func:`mix_narrow`."""
    if flat.dtype != routing_weights.dtype:
        return mix_narrow(routing_weights, flat)
    if flat.device.type != "cpu" or _records_or_compiles():
        # One product: graphs record it as one op (and see no test of the batch size), compilers
        # fuse it.
        return torch.mm(routing_weights, flat)
    needs_grad = torch.is_grad_enabled() and (routing_weights.requires_grad or flat.requires_grad)
    if not needs_grad:
        mixed = _native_float32_mix(routing_weights, flat)
        if mixed is not None:
            return mixed
    threshold = TUNING.split_mix_numel * (TUNING.split_mix_grad_factor if needs_grad else 1)
    split = (
        routing_weights.shape[0] == 1
        and flat.shape[1] >= threshold
        and flat.shape[1] % TUNING.split_mix_chunks == 0
    )
    if not split:
        # One product: autograd's backward for it is as good as any.
        return torch.mm(routing_weights, flat)
    if needs_grad:
        return _MixExperts.apply(routing_weights, flat)
    return _mix_split(routing_weights, flat)


def _native_float32_mix(
    routing_weights: torch.Tensor, flat: torch.Tensor
) -> Optional[torch.Tensor]:
    """The native kernel's ``routing_weights @ flat`` for float32 experts where it applies, else
    None: at most ``TUNING.native_mix_max_batch`` examples, eager (:func:`_native_applies`),
    the kernel built. The caller has checked the rest: CPU tensors of one dtype, no graph being
    recorded or compiled (before any test of the batch size, which a graph would keep as a guard)
    and no backward to follow."""
    if flat.dtype != torch.float32 or routing_weights.shape[0] > TUNING.native_mix_max_batch:
        return None
    if not _native_applies(routing_weights, flat):
        return None
    native = _native_kernel(torch.float32)
    return None if native is None else native(routing_weights, flat)


# One native call for the whole batch-1 inference CondConv (absent from builds before it).
_native_single = getattr(_native, "single_conv2d_f32", None)


@torch.jit.unused
def single_native_conv2d(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
    path: str,
) -> Optional[torch.Tensor]:
    """The CondConv of a batch of one on the "single" path with the native float32 mix, or None
    where that is not what :func:`.condconv.cond_conv2d` would compute (another path, a graph
    being recorded or compiled, a backward to follow, the mix not native).

    The same computation as ``cond_conv2d`` with ``path`` ("auto" or "single") there, without its
    general plumbing: at batch 1 a MobileNet-sized layer's time is mostly per call, and this is
    the inference call of every layer of such a network (docs/performance.md, "Where the rest
    goes").

    Where the package was built with it, one native call (``condconv_det._C.single_conv2d_f32``:
    the native mix, the bias's product, one convolution; the same operators, so the same result
    bit for bit) does it all and also checks the arguments (shapes, dtypes, devices, the
    smallest input), returning None where anything is off: a layer may call it before its own
    checks, which then name what is wrong. Python tests the state only Python knows (the switch
    :func:`native_mix`, ``torch.compile`` and ``torch.export``, before any size, which a graph
    would keep as a guard; forward-mode AD) and the tensor types (a ``__torch_function__``
    subclass wants to see the operators); the native side tests the rest (a trace, autocast,
    modes, functorch, a backward to follow).
    """
    if path != "auto" and path != "single":
        return None
    if _native_single is not None:
        if (
            not _python_state_allows_native_call()
            or type(x) is not torch.Tensor
            or type(routing_weights) is not torch.Tensor
            or not _plain_parameter(weight)
            or (bias is not None and not _plain_parameter(bias))
            or x.dim() != 4
            or x.shape[0] != 1
        ):
            return None
        try:
            return _native_single(
                x, routing_weights, weight, bias, stride, padding, dilation, groups
            )
        except TypeError:  # not two ints each (an int, "same", ...): F.conv2d's business
            return None
    if x.shape[0] != 1 or x.device.type != "cpu" or routing_weights.dtype != weight.dtype:
        return None
    if bias is not None and bias.dtype != weight.dtype:
        return None  # the general way casts it
    if _records_or_compiles():  # the graphs of auto_path too
        return None
    if torch.is_grad_enabled() and (
        routing_weights.requires_grad
        or weight.requires_grad
        or x.requires_grad
        or (bias is not None and bias.requires_grad)
    ):
        return None
    kernel_shape = weight.shape[1:]
    mixed = _native_float32_mix(routing_weights, weight.reshape(weight.shape[0], -1))
    if mixed is None:
        return None
    mixed_bias: Optional[torch.Tensor] = None
    if bias is not None:
        mixed_bias = torch.mm(routing_weights, bias).reshape(bias.shape[1])
    return F.conv2d(x, mixed.reshape(kernel_shape), mixed_bias, stride, padding, dilation, groups)


def _python_state_allows_native_call() -> bool:
    """What the one-call native paths (the short way, the router) cannot test themselves: the
    switch (:func:`native_mix`), ``torch.compile`` and ``torch.export`` (tested before any
    size, which a graph would keep as a guard) and forward-mode AD."""
    return (
        _native_enabled
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and forward_ad._current_level < 0
    )


def _plain_parameter(t: torch.Tensor) -> bool:
    """A plain tensor or ``nn.Parameter`` (whose ``__torch_function__`` is switched off)."""
    return type(t) is torch.nn.Parameter or type(t) is torch.Tensor


# One native call for a router's routing in inference (absent from builds before it).
_native_route = getattr(_native, "route_f32", None)


@torch.jit.unused
def native_route(
    x: torch.Tensor,
    hidden_weight: Optional[torch.Tensor],
    hidden_bias: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    softmax: bool,
    temperature: float,
) -> Optional[torch.Tensor]:
    """A router's inference routing in one native call (``condconv_det._C.route_f32``): global
    average pool, the optional hidden layer and its ReLU, the output layer, the temperature and
    sigmoid or softmax, within float32 rounding of those operators; or None where it does not
    apply or was not built. Here the state only Python knows (the switch, ``torch.compile``,
    ``torch.export``, forward-mode AD) and tensor types; the native side tests the rest."""
    if _native_route is None or not _python_state_allows_native_call():
        return None
    for t in (hidden_weight, hidden_bias, weight, bias):
        if t is not None and not _plain_parameter(t):
            return None
    return _native_route(x, hidden_weight, hidden_bias, weight, bias, softmax, temperature)


def _records_or_compiles() -> bool:
    """Whether this call is traced, exported or compiled (:func:`records_graph`, or
    ``torch.compile``): graphs and compilers see the plain product, not the eager-only forms of
    the mix."""
    return records_graph() or torch.compiler.is_compiling()


def _no_active(name: str):
    """``torch._C``'s test ``name``, or one that says no where this torch has none."""
    return getattr(torch._C, name, lambda: False)


_functorch_transforms_active = _no_active("_are_functorch_transforms_active")
_torch_function_mode_enabled = _no_active("_is_torch_function_mode_enabled")
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)


def _native_applies(routing_weights: torch.Tensor, flat: torch.Tensor) -> bool:
    """Whether the native kernel may compute this (eager, CPU) mix. It reads the tensors' memory
    itself, past PyTorch's dispatcher, so it steps aside for whatever works through the
    dispatcher: tensor subclasses (fake tensors, ...), function transforms (``vmap``,
    ``grad``), forward-mode AD, dispatch and function modes (FLOP counters, ...), and autocast
    (whose product would run in the autocast dtype). Also where switched off
    (:func:`native_mix`)."""
    return (
        _native_enabled
        and type(routing_weights) is torch.Tensor
        and type(flat) is torch.Tensor
        and not torch.is_autocast_enabled("cpu")
        and forward_ad._current_level < 0
        and not _functorch_transforms_active()
        and _dispatch_modes() == 0
        and not _torch_function_mode_enabled()
    )


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


def mix_narrow(routing_weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``routing_weights @ flat`` for experts stored in a narrower dtype than the routing's
    (bfloat16 under float32): the experts are upcast and multiplied in the routing's dtype, so
    the mixed kernel is accumulated and kept in float32 and the only rounding is the experts'.

    On the CPU, bfloat16 (and int8) experts under float32 routing go to the native kernel where
    the package was built with it (``condconv_det/layers/csrc/mix.cpp``): it widens each value in
    a register as it reads it, so the mix reads half (a quarter of) the float32 experts' bytes and
    writes no float32 copy. Otherwise, and for a backward, the experts are upcast in blocks of
    columns (``TUNING.narrow_mix_block_bytes`` of float32 experts each): one upcast copy of all of
    them would be a fresh buffer twice the float32 experts' size, written, read back and, past the
    allocator's mmap threshold, page-faulted anew on every call. A block stays in cache between
    its upcast and its product.
    """
    dtype = routing_weights.dtype
    numel = flat.shape[1]
    block = max(1, TUNING.narrow_mix_block_bytes // (flat.shape[0] * dtype.itemsize))
    if flat.device.type != "cpu" or _records_or_compiles():
        return torch.mm(routing_weights, flat.to(dtype))
    needs_grad = torch.is_grad_enabled() and (routing_weights.requires_grad or flat.requires_grad)
    native = _native_kernel(flat.dtype)
    if (
        native is not None
        and not needs_grad
        and dtype == torch.float32
        and routing_weights.device.type == "cpu"
        and _native_applies(routing_weights, flat)
    ):
        return native(routing_weights, flat)
    if numel <= block:
        return torch.mm(routing_weights, flat.to(dtype))
    blocks = flat.split(block, dim=1)
    if needs_grad:
        return torch.cat([torch.mm(routing_weights, b.to(dtype)) for b in blocks], dim=1)
    mixed = torch.empty(routing_weights.shape[0], numel, dtype=dtype)
    for out, b in zip(mixed.split(block, dim=1), blocks):
        torch.mm(routing_weights, b.to(dtype), out=out)
    return mixed


def _mix_split(routing_weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """(1, E) x (E, P) -> (1, P) as a batch of column blocks; P divisible by the block count.

    At batch 1 the mix is a matrix-vector product bound by reading the experts. As one product
    it does not keep every CPU thread reading; as a batch of column blocks it does
    (docs/performance.md).
    """
    num_experts, numel = flat.shape
    chunks = TUNING.split_mix_chunks
    blocks = flat.reshape(num_experts, chunks, numel // chunks).transpose(0, 1)
    mixed = torch.bmm(routing_weights.expand(chunks, 1, num_experts), blocks)
    return mixed.reshape(1, numel)


def matmul_conv2d(
    x: torch.Tensor,
    kernels: torch.Tensor,
    biases: Optional[torch.Tensor],
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """The "matmul" path: per-example kernels times the input (1x1) or its patches (im2col).

    Args:
        x: (B, C, H, W).
        kernels: (B, O, C/g, kh, kw), each example's mixed kernel.
        biases: (B, O) or None.
        kernel_size: (kh, kw), taken from the expert weights: constants in a traced graph,
            unlike the sizes of ``kernels``.
        stride, padding, dilation, groups: as for :func:`torch.nn.functional.conv2d`.

    Returns:
        (B, O, H', W').
    """
    cols, out_h, out_w = _patches(x, kernel_size, stride, padding, dilation, groups)
    out = _apply_kernels(cols, kernels, biases, groups)
    return out.reshape(x.shape[0], kernels.shape[1], out_h, out_w)


def _patches(
    x: torch.Tensor,
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
) -> Tuple[torch.Tensor, int, int]:
    """The input as columns for a kh x kw kernel: (B * groups, C/g * kh * kw, L), channels
    outermost as in a kernel's (C/g, kh, kw) layout, and the output size (H', W'), L = H' * W'.
    A 1x1 kernel takes the input itself (padded and strided), anything else its unfolded patches."""
    batch, channels, height, width = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    kh, kw = kernel_size
    out_h = conv_out_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = conv_out_size(width, kw, stride[1], padding[1], dilation[1])
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


@torch.jit.unused
def matmul_blocks(routing_weights: torch.Tensor, weight: torch.Tensor, groups: int) -> int:
    """In how many blocks of output channels the "matmul" path mixes and applies its kernels,
    each block's mixed kernels under ``TUNING.matmul_block_bytes``; 1 (no blocks) off the CPU,
    for grouped convs, and in a traced or compiled graph."""
    if groups != 1 or weight.device.type != "cpu" or torch.jit.is_tracing():
        return 1
    if torch.compiler.is_compiling():
        return 1  # the compiler plans its own buffers; a Python loop would only unroll
    itemsize = mix_dtype(routing_weights, weight).itemsize  # of the mixed kernels
    kernel_bytes = routing_weights.shape[0] * weight[0].numel() * itemsize
    return min(weight.shape[1], -(-kernel_bytes // TUNING.matmul_block_bytes))


@torch.jit.unused
def blocked_matmul_conv2d(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    blocks: int,
) -> torch.Tensor:
    """The "matmul" path with the kernels mixed and applied one block of output channels at a
    time (groups == 1; ``blocks`` from :func:`matmul_blocks`).

    Materialising all ``B`` mixed kernels at once costs ``B x`` a kernel of memory, written by
    the mix and read back by the product. Past the C library's mmap threshold such a buffer is
    mapped afresh and page-faulted on every call, and it never stays in cache. In blocks, each
    expert is still read once, the block's kernels stay small (one reused, cache-sized buffer)
    and the gradient of the experts is assembled once by the chunking's backward.

    Args:
        x: (B, C, H, W).
        routing_weights: (B, E); weight: (E, O, C, kh, kw); bias: (E, O) or None.
        stride, padding, dilation: as for :func:`torch.nn.functional.conv2d`.
        blocks: the number of blocks of output channels.

    Returns:
        (B, O, H', W').
    """
    batch, num_experts = routing_weights.shape
    kernel_size = (weight.shape[3], weight.shape[4])
    cols, out_h, out_w = _patches(x, kernel_size, stride, padding, dilation, 1)
    weight_blocks = weight.chunk(blocks, dim=1)
    bias_blocks = bias.chunk(blocks, dim=1) if bias is not None else [None] * len(weight_blocks)
    outs = []
    for weight_block, bias_block in zip(weight_blocks, bias_blocks):
        # The mix in the weights' dtype (or the routing's, if wider), as mix_eager's.
        with _without_autocast(weight.device.type):
            routing = routing_weights.to(mix_dtype(routing_weights, weight))
            flat_block = weight_block.reshape(num_experts, -1)
            if flat_block.dtype == routing.dtype:
                kernels = torch.mm(routing, flat_block)
            else:
                kernels = mix_narrow(routing, flat_block)
            biases = None
            if bias_block is not None:
                biases = torch.mm(routing, bias_block.to(routing.dtype))
        kernels = kernels.reshape(batch, weight_block.shape[1], -1)
        if biases is not None:
            outs.append(torch.baddbmm(biases.unsqueeze(2), kernels, cols))
        else:
            outs.append(torch.bmm(kernels, cols))
    return torch.cat(outs, dim=1).reshape(batch, weight.shape[1], out_h, out_w)


def _without_autocast(device_type: str) -> ContextManager:
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def experts_conv2d(
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

    Args and returns as :func:`.cond_conv2d`.
    """
    num_experts, out_channels = weight.shape[0], weight.shape[1]
    per_group = out_channels // groups
    # All experts as one conv with E x the output channels, ordered (group, expert, channel)
    # so that each group's experts see that group's inputs. With groups == 1 this is a view.
    kernel_shape = list(weight.shape[2:])
    stacked = weight.reshape([num_experts, groups, per_group] + kernel_shape)
    stacked = stacked.transpose(0, 1).reshape([groups * num_experts * per_group] + kernel_shape)
    if torch.promote_types(stacked.dtype, routing_weights.dtype) != stacked.dtype:
        # Experts stored in bfloat16 under float32 routing (CondConv2d.reduced_precision_experts)
        # convolve in float32: E x a kernel upcast, for the tiny maps this path is for. (The
        # layer never sends int8 experts here: it mixes them once.)
        stacked = stacked.to(routing_weights.dtype)
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

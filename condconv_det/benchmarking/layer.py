"""The layer benchmark (``tools/benchmark_layer.py``): :class:`~condconv_det.layers.CondConv2d`
against the static conv of the same shape and timm's ``CondConv2d``, on conv shapes of
MobileNetV2 and ResNet-50, with a floor set by the time it takes to read the experts
(:mod:`.floor`)."""

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from condconv_det.layers import CondConv2d

from .floor import floor_seconds
from .table import markdown_row
from .timing import round_robin_times

__all__ = [
    "QUICK_SHAPES",
    "SHAPES",
    "Case",
    "ConvShape",
    "LayerBenchmarkOptions",
    "TargetSummary",
    "bench_case",
    "format_row",
    "geomean",
    "naive_loop",
    "table_header",
    "table_row",
    "timm_peer",
]

# Targets of CondConv2d: the geometric mean of its time over timm's, and its time over the floor
# at batch-1 eval and at batch > 1.
TARGET_GEOMEAN_X_TIMM = 0.5
TARGET_FLOOR_BATCH1_EVAL = 1.2
TARGET_FLOOR_BATCHED = 1.5


class ConvShape(NamedTuple):
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    size: int  # input height = width


# Shapes at 224x224 input. MobileNetV2: the 14x14 (96 ch) and 7x7 (160/320 ch) stages.
# ResNet-50: res4 (14x14) and res5 (7x7) bottleneck convs.
SHAPES = [
    ConvShape("mbv2 s5 expand 1x1 96->576", 96, 576, 1, 1, 1, 14),
    ConvShape("mbv2 s5 dw 3x3 576", 576, 576, 3, 1, 576, 14),
    ConvShape("mbv2 s6 expand 1x1 160->960", 160, 960, 1, 1, 1, 7),
    ConvShape("mbv2 s6 dw 3x3 960", 960, 960, 3, 1, 960, 7),
    ConvShape("mbv2 s6 project 1x1 960->160", 960, 160, 1, 1, 1, 7),
    ConvShape("mbv2 s7 project 1x1 960->320", 960, 320, 1, 1, 1, 7),
    ConvShape("r50 res4 1x1 1024->256", 1024, 256, 1, 1, 1, 14),
    ConvShape("r50 res4 3x3 256", 256, 256, 3, 1, 1, 14),
    ConvShape("r50 res5 1x1 2048->512", 2048, 512, 1, 1, 1, 7),
    ConvShape("r50 res5 3x3 512", 512, 512, 3, 1, 1, 7),
    ConvShape("r50 res5 1x1 512->2048", 512, 2048, 1, 1, 1, 7),
]
QUICK_SHAPES = [
    ConvShape("quick 3x3 32", 32, 32, 3, 1, 1, 8),
    ConvShape("quick dw 3x3 64", 64, 64, 3, 1, 64, 8),
]


@dataclass(frozen=True)
class LayerBenchmarkOptions:
    """How each case is timed, and which extra implementations are timed with it.

    Attributes:
        min_time (float): seconds timed per implementation, at least.
        min_reps (int): timed calls per implementation, at least.
        stat (str): "median" or "min" of the calls' times.
        channels_last (bool): inputs and the static conv in channels-last memory order.
        inference_mode (bool): eval under ``torch.inference_mode()`` instead of ``no_grad()``.
        compile (bool): also time ``torch.compile(CondConv2d)``.
        paths (Sequence[str]): also time CondConv2d forced onto each of these paths.
        loop (bool): also time the naive per-example loop (:func:`naive_loop`).
    """

    min_time: float = 0.2
    min_reps: int = 5
    stat: str = "median"
    channels_last: bool = False
    inference_mode: bool = False
    compile: bool = False
    paths: Sequence[str] = ()
    loop: bool = False


def naive_loop(x, routing, weight, bias, stride, padding, groups):
    """One mixed kernel and one conv per example, as the official TF implementation does."""
    num_experts = weight.shape[0]
    outs = []
    for b in range(x.shape[0]):
        flat = weight.reshape(num_experts, -1)
        kernel = torch.mm(routing[b : b + 1], flat).reshape(weight.shape[1:])
        kernel_bias = torch.mm(routing[b : b + 1], bias)[0]
        outs.append(F.conv2d(x[b : b + 1], kernel, kernel_bias, stride, padding, 1, groups))
    return torch.cat(outs)


def timm_peer(cond: CondConv2d) -> torch.nn.Module:
    """timm's CondConv2d holding ``cond``'s experts, in timm's flat ``(E, O*C/g*kh*kw)`` layout."""
    from timm.layers.cond_conv2d import CondConv2d as TimmCondConv2d

    peer = TimmCondConv2d(
        cond.in_channels,
        cond.out_channels,
        cond.kernel_size,
        cond.stride,
        cond.padding,
        cond.dilation,
        cond.groups,
        bias=cond.bias is not None,
        num_experts=cond.num_experts,
    ).to(device=cond.weight.device)
    with torch.no_grad():
        peer.weight.copy_(cond.weight.reshape(cond.num_experts, -1))
        if cond.bias is not None:
            peer.bias.copy_(cond.bias)
    return peer


class Case(NamedTuple):
    """Seconds per call of each implementation on one shape and batch, and the experts' size."""

    times: Dict[str, float]  # "static", "condconv", "timm" and the options' extras
    expert_bytes: int  # all E experts' kernels

    def floor(self, batch: int, bandwidth: float) -> float:
        """Seconds of the static conv plus one read of every expert per example."""
        return floor_seconds(self.times["static"], batch * self.expert_bytes, bandwidth)


@contextlib.contextmanager
def without_tf32() -> Iterator[None]:
    """Within the block, CUDA's matrix products and convolutions in full float32 (TensorFloat-32
    off), as comparisons against a float32 reference need."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def bench_case(
    shape: ConvShape,
    batch: int,
    train: bool,
    experts: int,
    device: torch.device,
    options: LayerBenchmarkOptions,
) -> Case:
    """Times the static conv, our CondConv2d, timm's and any extras on one shape and batch.

    Train steps are forward + backward with the gradients set to None first, as
    ``optimizer.zero_grad()`` does. Every implementation's output is first checked against ours.
    """
    torch.manual_seed(0)
    padding = shape.kernel // 2
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    conv_args = (shape.in_channels, shape.out_channels, shape.kernel, shape.stride, padding)
    static = torch.nn.Conv2d(*conv_args, groups=shape.groups)
    static = static.to(device=device, memory_format=memory_format)
    cond = CondConv2d(*conv_args, groups=shape.groups, num_experts=experts).to(device)
    peer = timm_peer(cond)
    x = torch.randn(batch, shape.in_channels, shape.size, shape.size, device=device)
    x = x.contiguous(memory_format=memory_format)
    routing = torch.rand(batch, experts, device=device)

    modules: Dict[str, Callable[[], torch.Tensor]] = {
        "static": lambda: static(x),
        "condconv": lambda: cond(x, routing),
        "timm": lambda: peer(x, routing),
    }
    if options.compile:
        compiled = torch.compile(cond)
        modules["compiled"] = lambda: compiled(x, routing)
    for path in options.paths:
        path_layer = copy.deepcopy(cond)
        path_layer.path = path
        modules[f"path:{path}"] = (lambda layer: lambda: layer(x, routing))(path_layer)
    if options.loop:
        modules["loop"] = lambda: naive_loop(
            x, routing, cond.weight, cond.bias, cond.stride, cond.padding, cond.groups
        )

    # Every peer must compute what we compute, or its time means nothing. In full float32: a
    # GPU's TensorFloat-32 products differ by up to ~1e-3 of the output's scale, and differently
    # for each way of ordering the sums.
    with torch.no_grad(), without_tf32():
        want = cond(x, routing)
        for name, fn in modules.items():
            if name != "static":
                torch.testing.assert_close(fn(), want, rtol=1e-3, atol=1e-3, msg=name)

    params = [p for m in (static, cond, peer) for p in m.parameters()]
    if train:
        x.requires_grad_(True)
        routing.requires_grad_(True)
        params += [x, routing]

    def run(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            if train:
                for p in params:
                    p.grad = None
                forward().sum().backward()
            elif options.inference_mode:
                with torch.inference_mode():
                    forward()
            else:
                with torch.no_grad():
                    forward()

        return step

    steps = {k: run(f) for k, f in modules.items()}
    times = round_robin_times(steps, device, options.min_time, options.min_reps, options.stat)
    return Case(times, cond.weight.numel() * cond.weight.element_size())


def geomean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def table_header(options: LayerBenchmarkOptions) -> List[str]:
    """The columns of the table: the case, the three implementations, the floor, the extras."""
    header = ["shape", "batch", "mode", "E", "static ms", "condconv ms", "x static"]
    header += ["timm ms", "x timm", "floor ms", "x floor"]
    if options.compile:
        header += ["compiled ms", "compiled x timm"]
    header += [f"{p} ms" for p in options.paths]
    if options.loop:
        header += ["x loop"]
    return header


def table_row(
    shape: ConvShape,
    batch: int,
    mode: str,
    experts: int,
    case: Case,
    bandwidth: float,
    options: LayerBenchmarkOptions,
) -> List[str]:
    """One case's cells, in the order of :func:`table_header`."""
    t = case.times
    floor = case.floor(batch, bandwidth)
    ours = t["condconv"]
    row = [shape.name, str(batch), mode, str(experts), f"{t['static'] * 1e3:.3f}"]
    row += [f"{ours * 1e3:.3f}", f"{ours / t['static']:.2f}", f"{t['timm'] * 1e3:.3f}"]
    row += [f"{ours / t['timm']:.2f}", f"{floor * 1e3:.3f}", f"{ours / floor:.2f}"]
    if options.compile:
        row += [f"{t['compiled'] * 1e3:.3f}", f"{t['compiled'] / t['timm']:.2f}"]
    row += [f"{t[f'path:{p}'] * 1e3:.3f}" for p in options.paths]
    if options.loop:
        row += [f"{ours / t['loop']:.2f}"]
    return row


def format_row(cells: Sequence[str], markdown: bool) -> str:
    """A row (or the header) printed as soon as it is measured: Markdown, or fixed widths."""
    if markdown:
        return markdown_row(cells)
    return "  ".join(f"{c:>11}" if i else f"{c:<30}" for i, c in enumerate(cells))


class TargetSummary:
    """Counts the rows that meet the targets, as they are measured."""

    def __init__(self) -> None:
        self.x_timm: List[float] = []
        self.floor_rows = {"b1": [0, 0], "batched": [0, 0]}  # [met, total]

    def add(self, batch: int, mode: str, case: Case, bandwidth: float) -> None:
        ours = case.times["condconv"]
        x_floor = ours / case.floor(batch, bandwidth)
        self.x_timm.append(ours / case.times["timm"])
        if batch == 1 and mode == "eval":
            self.floor_rows["b1"][0] += x_floor <= TARGET_FLOOR_BATCH1_EVAL
            self.floor_rows["b1"][1] += 1
        elif batch > 1:
            self.floor_rows["batched"][0] += x_floor <= TARGET_FLOOR_BATCHED
            self.floor_rows["batched"][1] += 1

    def line(self) -> str:
        """The summary line printed under the table."""
        x_timm, b1, batched = self.x_timm, self.floor_rows["b1"], self.floor_rows["batched"]
        slower = sum(v > 1.0 for v in x_timm)
        return (
            f"# summary: {len(x_timm)} rows; geomean x timm {geomean(x_timm):.2f} "
            f"(target <= {TARGET_GEOMEAN_X_TIMM}); not slower than timm on "
            f"{len(x_timm) - slower}/{len(x_timm)} rows; batch-1 eval within "
            f"{TARGET_FLOOR_BATCH1_EVAL}x of floor on {b1[0]}/{b1[1]}; "
            f"batch>1 within {TARGET_FLOOR_BATCHED}x of floor on {batched[0]}/{batched[1]}"
        )

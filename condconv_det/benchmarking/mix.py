"""The batch-1 kernel mix against the read bandwidth (``tools/benchmark_layer.py --mix``).

At batch 1 a CondConv layer's extra cost is mixing its kernel, ``r @ W`` for the ``(1, E)``
routing and the ``(E, P)`` flattened experts: half a multiply-add per byte read, so the best it
can do is read the experts as fast as a plain reduction over them does. This module times the
mix alone, round-robin with that reduction (``flat.sum()``) over the same experts, so that a
slow phase of a shared machine slows both alike and their ratio is the fraction of the read
bandwidth the mix reaches. Each call reads its experts from memory, as inside a network whose
other layers evict them from the caches between two calls: it takes the next of several copies
of the experts, together larger than the caches (:data:`COLD_BYTES`).

Beside the float32 mix it times the two reduced-precision stores of the experts that would halve
or quarter the bytes read: bfloat16 (the layer's ``store_experts_in(model, torch.bfloat16)``,
mixed by the native kernel where the package was built with it, and by the eager upcast in
blocks, ``"bfloat16 eager"``) and int8 (:func:`quantize_experts_int8`, one scale per expert
folded into the routing; likewise native and eager), each mixed into a float32 kernel, so that
whether they pay is measured on the same experts in the same run. The layer's int8 store
(``store_experts_in(model, torch.int8)``) has one scale per output channel instead, applied
after the mix: its mix is the same product of the int8 experts.
"""

import itertools
import math
from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch
from torch import nn

from condconv_det.layers import CondConv2d
from condconv_det.layers._condconv_fast import mix_eager, mix_narrow, native_mix
from condconv_det.layers.expert_storage import (
    dequantize_per_channel,
    quantize_per_channel_int8,
    quantize_rows_int8,
)

from .layer import SHAPES, ConvShape
from .timing import round_robin_times

__all__ = [
    "COLD_BYTES",
    "INT8_SCALES",
    "MIX_SHAPES",
    "QUICK_MIX_SHAPES",
    "REDUCED_PRECISION",
    "TARGET_MIX_BANDWIDTH",
    "MixCase",
    "bench_mix",
    "cold_copies",
    "mix_header",
    "mix_int8",
    "mix_row",
    "mix_summary",
    "quantize_experts_int8",
    "reduced_precision_summary",
    "round_experts_to_int8",
]

# The reduced-precision stores the mix benchmark times, with the time each would take if the mix
# read its bytes at the float32 mix's rate (the fraction of the float32 experts' bytes).
REDUCED_PRECISION = {"bfloat16": 0.5, "bfloat16 eager": 0.5, "int8": 0.25, "int8 eager": 0.25}

# The copies of the experts a timed call cycles through add up to at least this many bytes: twice
# the 32 MiB last-level cache of the x86 machines the tables were measured on, so that every call
# reads its experts from memory.
COLD_BYTES = 64 << 20
# The fraction of the read bandwidth the batch-1 mix should reach on the large layers.
TARGET_MIX_BANDWIDTH = 0.8

# The layers with the largest experts (8 MB and more at 8 experts): ResNet-50's res4 and res5,
# and MobileNetV1's 512- and 1024-channel pointwise convs (the SSD300 backbone's routed layers).
MIX_SHAPES = [s for s in SHAPES if s.name.startswith("r50")] + [
    ConvShape("mbv1 pw 1x1 512->512", 512, 512, 1, 1, 1, 19),
    ConvShape("mbv1 pw 1x1 512->1024", 512, 1024, 1, 1, 1, 10),
    ConvShape("mbv1 pw 1x1 1024->1024", 1024, 1024, 1, 1, 1, 10),
    # EfficientNet-B0's last stages: many smaller experts, 0.9-7 MB per layer with 8.
    ConvShape("b0 s6 expand 1x1 192->1152", 192, 1152, 1, 1, 1, 7),
    ConvShape("b0 s6 dw 5x5 1152", 1152, 1152, 5, 1, 1152, 7),
    ConvShape("b0 s7 project 1x1 1152->320", 1152, 320, 1, 1, 1, 7),
]
QUICK_MIX_SHAPES = [ConvShape("quick pw 1x1 64->64", 64, 64, 1, 1, 1, 8)]


def cold_copies(store_bytes: int, cold_bytes: int = COLD_BYTES) -> int:
    """How many copies of a store of experts of ``store_bytes`` the timed calls cycle through:
    together at least ``cold_bytes``, and at least one."""
    if store_bytes <= 0:
        return 1
    return max(1, math.ceil(cold_bytes / store_bytes))


def quantize_experts_int8(flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Experts ``(E, P)`` as int8 with one float32 scale per expert: ``flat ~ scales * q``.

    Symmetric, to the nearest step: expert ``i``'s largest magnitude maps to 127. An expert of
    zeros gets scale 1 (its values stay 0).

    Returns:
        ``q`` (E, P) int8 and ``scales`` (E, 1) float32.
    """
    return quantize_rows_int8(flat)


# The scales :func:`round_experts_to_int8` can round with.
INT8_SCALES = ("expert", "channel")


def round_experts_to_int8(module: nn.Module, scales: str = "expert") -> nn.Module:
    """Rounds the experts (and static kernels) of every :class:`.CondConv2d` in ``module`` to
    int8, in place, and keeps them in float32: the module then computes what a store of int8
    experts would, so that its accuracy can be measured with any evaluation. Returns ``module``.

    Args:
        module: a model or layer with float32 experts.
        scales: ``"expert"``, one scale per expert (:func:`quantize_experts_int8`, what
            :func:`mix_int8` mixes: the scales fold into the routing); or ``"channel"``, one
            scale per output channel shared by all the experts of a layer, as the layer's own
            int8 store rounds them (``store_experts_in(model, torch.int8)``:
            ``W(x)[c] = s[c] * sum_i r_i q_i[c]``). The static kernel has scales of its own,
            one in all or one per output channel.

    Raises:
        ValueError: experts that are not float32 (e.g. already stored in bfloat16), or another
            ``scales``.
    """
    if scales not in INT8_SCALES:
        raise ValueError(
            f"round_experts_to_int8: scales must be one of {INT8_SCALES}, got {scales!r}"
        )
    for layer in module.modules():
        if not isinstance(layer, CondConv2d):
            continue
        for name in ("weight", "static_weight"):
            param = getattr(layer, name)
            if param is None:
                continue
            if param.dtype != torch.float32:
                raise ValueError(
                    f"round_experts_to_int8: {name} of a CondConv2d is {param.dtype}; round the "
                    "float32 experts (before store_experts_in)"
                )
            values = param.detach()
            if scales == "channel":
                experts = name == "weight"
                rounded = dequantize_per_channel(
                    *quantize_per_channel_int8(values, experts), experts
                )
            else:
                # One scale per expert; the static kernel is one more expert, with a scale of
                # its own.
                rows = values.shape[0] if name == "weight" else 1
                q, step = quantize_experts_int8(values.reshape(rows, -1))
                rounded = (step * q.float()).reshape(values.shape)
            with torch.no_grad():
                param.copy_(rounded)
    return module


def mix_int8(routing_weights: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 mix of int8 experts: ``(r * scales^T) @ q``, the per-expert scales folded into
    the routing, accumulated in float32 as the layer mixes bfloat16 experts: by the native kernel
    where it is built and in use (:func:`.native_mix`), else upcast in blocks (each block cached
    between its upcast and its product)."""
    return mix_narrow(routing_weights * scales.reshape(1, -1), q)


class MixCase(NamedTuple):
    """Seconds per call: the batch-1 mix, ours (``"ours"``: the layer's inference mix, the native
    kernel where it is built), ours without the native kernel (``"column blocks"``: BLAS's product
    in column blocks, as the layer mixes for a backward) and as one matrix product (``"one
    product"``, what timm and the official code compute), a plain reduction over the same
    experts (``"read"``), and the mix of the same experts stored in bfloat16 (``"bfloat16"``,
    the layer's path: the native kernel where it is built; ``"bfloat16 eager"``, the upcast in
    blocks) and in int8 (``"int8"`` and ``"int8 eager"`` likewise); and the bytes of the float32
    experts each call reads."""

    times: Dict[str, float]
    expert_bytes: int

    def bandwidth(self, name: str) -> float:
        """Bytes per second the call ``name`` reads the experts at."""
        return self.expert_bytes / self.times[name]

    def fraction(self, name: str) -> float:
        """The fraction of the read bandwidth (the reduction's) the mix ``name`` reaches."""
        return self.times["read"] / self.times[name]

    def vs_float32(self, name: str) -> float:
        """The time of the mix ``name`` over the float32 mix's (ours)."""
        return self.times[name] / self.times["ours"]


def bench_mix(
    shape: ConvShape,
    experts: int,
    device: torch.device,
    min_time: float,
    min_reps: int,
    stat: str = "median",
    cold_bytes: int = COLD_BYTES,
) -> MixCase:
    """Times the batch-1 eval mix of one layer's experts (float32, and stored in bfloat16 and in
    int8), reading them from memory.

    Args:
        shape: the conv whose experts are mixed.
        experts: E.
        device, min_time, min_reps, stat: as for :func:`.timing.round_robin_times`.
        cold_bytes: the copies of the experts that the calls cycle through add up to at least
            this many bytes (0: one copy, which a cache may hold between calls).
    """
    torch.manual_seed(0)
    numel = shape.out_channels * (shape.in_channels // shape.groups) * shape.kernel**2
    expert_bytes = experts * numel * 4
    flats = [
        torch.randn(experts, numel, device=device)
        for _ in range(cold_copies(expert_bytes, cold_bytes))
    ]
    routing = torch.rand(1, experts, device=device)
    torch.testing.assert_close(
        mix_eager(routing, flats[0], None, False)[0], torch.mm(routing, flats[0])
    )
    # The narrower experts in as many bytes of copies (2x and 4x as many), so that they too are
    # read from memory.
    bf16_copies = cold_copies(expert_bytes // 2, cold_bytes)
    bf16 = [flats[i % len(flats)].to(torch.bfloat16) for i in range(bf16_copies)]
    int8_copies = cold_copies(expert_bytes // 4, cold_bytes)
    int8 = [quantize_experts_int8(flats[i % len(flats)]) for i in range(int8_copies)]
    torch.testing.assert_close(
        mix_eager(routing, bf16[0], None, False)[0], torch.mm(routing, bf16[0].float())
    )
    q, scales = int8[0]
    torch.testing.assert_close(mix_int8(routing, q, scales), torch.mm(routing, scales * q.float()))

    def cycling(mix, stores=flats, native=True):
        each = itertools.cycle(stores)

        def call() -> None:
            with torch.no_grad(), native_mix(native):
                mix(next(each))

        return call

    steps = {
        "read": cycling(lambda flat: flat.sum()),
        "ours": cycling(lambda flat: mix_eager(routing, flat, None, False)),
        "column blocks": cycling(lambda flat: mix_eager(routing, flat, None, False), native=False),
        "one product": cycling(lambda flat: torch.mm(routing, flat)),
        "bfloat16": cycling(lambda flat: mix_eager(routing, flat, None, False), bf16),
        "bfloat16 eager": cycling(
            lambda flat: mix_eager(routing, flat, None, False), bf16, native=False
        ),
        "int8": cycling(lambda store: mix_int8(routing, *store), int8),
        "int8 eager": cycling(lambda store: mix_int8(routing, *store), int8, native=False),
    }
    return MixCase(round_robin_times(steps, device, min_time, min_reps, stat), expert_bytes)


def mix_header() -> List[str]:
    return ["shape", "E", "experts MB", "read GB/s", "ours ms", "ours x read bw"] + [
        "column blocks ms",
        "column blocks x read bw",
        "one product ms",
        "one product x read bw",
        "bfloat16 ms",
        "bfloat16 x float32",
        "bfloat16 eager ms",
        "bfloat16 eager x float32",
        "int8 ms",
        "int8 x float32",
        "int8 eager ms",
        "int8 eager x float32",
    ]


def mix_row(shape: ConvShape, experts: int, case: MixCase) -> List[str]:
    """One case's cells, in the order of :func:`mix_header`."""
    return [
        shape.name,
        str(experts),
        f"{case.expert_bytes / 1e6:.1f}",
        f"{case.bandwidth('read') / 1e9:.1f}",
        f"{case.times['ours'] * 1e3:.3f}",
        f"{case.fraction('ours'):.2f}",
        f"{case.times['column blocks'] * 1e3:.3f}",
        f"{case.fraction('column blocks'):.2f}",
        f"{case.times['one product'] * 1e3:.3f}",
        f"{case.fraction('one product'):.2f}",
        f"{case.times['bfloat16'] * 1e3:.3f}",
        f"{case.vs_float32('bfloat16'):.2f}",
        f"{case.times['bfloat16 eager'] * 1e3:.3f}",
        f"{case.vs_float32('bfloat16 eager'):.2f}",
        f"{case.times['int8'] * 1e3:.3f}",
        f"{case.vs_float32('int8'):.2f}",
        f"{case.times['int8 eager'] * 1e3:.3f}",
        f"{case.vs_float32('int8 eager'):.2f}",
    ]


def mix_summary(cases: Sequence[MixCase]) -> str:
    """The summary line under the mix table: the rows at the target fraction of the bandwidth."""
    fractions = [c.fraction("ours") for c in cases]
    met = sum(f >= TARGET_MIX_BANDWIDTH for f in fractions)
    low = f"{min(fractions):.2f}" if fractions else "-"
    return (
        f"# mix summary: batch-1 mix at >= {TARGET_MIX_BANDWIDTH} of the read bandwidth on "
        f"{met}/{len(fractions)} rows (lowest {low})"
    )


def reduced_precision_summary(cases: Sequence[MixCase]) -> str:
    """The line under the mix table on the reduced-precision stores: each one's time over the
    float32 mix's, lowest and highest over the rows, against what reading only its bytes at the
    float32 mix's rate would give."""
    parts = []
    for name, ideal in REDUCED_PRECISION.items():
        ratios = [c.vs_float32(name) for c in cases]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
        parts.append(f"{name} experts {spread}x the float32 mix's time (its bytes alone: {ideal})")
    return "# reduced precision: " + "; ".join(parts)

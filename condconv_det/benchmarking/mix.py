"""The batch-1 kernel mix against the read bandwidth (``tools/benchmark_layer.py --mix``).

At batch 1 a CondConv layer's extra cost is mixing its kernel, ``r @ W`` for the ``(1, E)``
routing and the ``(E, P)`` flattened experts: half a multiply-add per byte read, so the best it
can do is read the experts as fast as a plain reduction over them does. This module times the
mix alone, round-robin with that reduction (``flat.sum()``) over the same experts, so that a
slow phase of a shared machine slows both alike and their ratio is the fraction of the read
bandwidth the mix reaches. Each call reads its experts from memory, as inside a network whose
other layers evict them from the caches between two calls: it takes the next of several copies
of the experts, together larger than the caches (:data:`COLD_BYTES`).
"""

import itertools
import math
from typing import Dict, List, NamedTuple, Sequence

import torch

from condconv_det.layers._condconv_fast import mix_eager

from .layer import SHAPES, ConvShape
from .timing import round_robin_times

__all__ = [
    "COLD_BYTES",
    "MIX_SHAPES",
    "QUICK_MIX_SHAPES",
    "TARGET_MIX_BANDWIDTH",
    "MixCase",
    "bench_mix",
    "mix_header",
    "mix_row",
    "mix_summary",
]

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
]
QUICK_MIX_SHAPES = [ConvShape("quick pw 1x1 64->64", 64, 64, 1, 1, 1, 8)]


class MixCase(NamedTuple):
    """Seconds per call: the batch-1 mix, ours (``"ours"``) and as one matrix product (``"one
    product"``, what timm and the official code compute), and a plain reduction over the same
    experts (``"read"``); and the bytes of the experts each call reads."""

    times: Dict[str, float]
    expert_bytes: int

    def bandwidth(self, name: str) -> float:
        """Bytes per second the call ``name`` reads the experts at."""
        return self.expert_bytes / self.times[name]

    def fraction(self, name: str) -> float:
        """The fraction of the read bandwidth (the reduction's) the mix ``name`` reaches."""
        return self.times["read"] / self.times[name]


def bench_mix(
    shape: ConvShape,
    experts: int,
    device: torch.device,
    min_time: float,
    min_reps: int,
    stat: str = "median",
    cold_bytes: int = COLD_BYTES,
) -> MixCase:
    """Times the batch-1 eval mix of one layer's experts (float32), reading them from memory.

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
    copies = max(1, math.ceil(cold_bytes / expert_bytes))
    flats = [torch.randn(experts, numel, device=device) for _ in range(copies)]
    routing = torch.rand(1, experts, device=device)
    torch.testing.assert_close(
        mix_eager(routing, flats[0], None, False)[0], torch.mm(routing, flats[0])
    )

    def cycling(mix):
        each = itertools.cycle(flats)

        def call() -> None:
            with torch.no_grad():
                mix(next(each))

        return call

    steps = {
        "read": cycling(lambda flat: flat.sum()),
        "ours": cycling(lambda flat: mix_eager(routing, flat, None, False)),
        "one product": cycling(lambda flat: torch.mm(routing, flat)),
    }
    return MixCase(round_robin_times(steps, device, min_time, min_reps, stat), expert_bytes)


def mix_header() -> List[str]:
    return ["shape", "E", "experts MB", "read GB/s", "ours ms", "ours x read bw"] + [
        "one product ms",
        "one product x read bw",
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
        f"{case.times['one product'] * 1e3:.3f}",
        f"{case.fraction('one product'):.2f}",
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

"""What CondConv costs in wall-clock time and memory (``tools/benchmark_layer.py``,
``tools/benchmark_model.py``; results in docs/performance.md).

- :mod:`.timing`: calls timed round-robin, so that a slow phase of a shared machine slows every
  contender alike and the ratios between them stay fair.
- :mod:`.memory`: the peak memory of a call, the bytes of a model's training state.
- :mod:`.floor`: the machine's read bandwidth and the floors it sets: the static twin's time
  plus the experts' bytes moved.
- :mod:`.layer`: the layer benchmark, CondConv2d against the static conv and timm's CondConv2d.
- :mod:`.model`: the model benchmark, CondConv models against their static twins.
- :mod:`.table`: the result tables, plain text or Markdown.

The layer and model benchmarks are imported from their modules; this package exposes the
measurements they share.
"""

from .floor import read_bandwidth
from .memory import model_state_bytes, peak_memory
from .timing import paired_times, round_robin_times, sync

__all__ = [
    "model_state_bytes",
    "paired_times",
    "peak_memory",
    "read_bandwidth",
    "round_robin_times",
    "sync",
]

"""Memory of a call and of a model's training state."""

from typing import Callable

import torch
from torch import nn

from .timing import sync

__all__ = ["model_state_bytes", "peak_memory"]


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated when it started.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the profiler's record of every allocation
    (positive bytes) and free (negative bytes) of PyTorch's CPU allocator; their running sum in
    time order is the allocated memory's change since the start, and its maximum the peak.
    Allocations made outside PyTorch's allocator (oneDNN's own buffers) are not seen.
    """
    if device.type == "cuda":
        sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    ]
    records.sort(key=lambda r: r[0])  # stable: same-time records keep their recorded order
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the parameters, their gradients and the optimizer's buffers (each storage once)."""
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    storages = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())

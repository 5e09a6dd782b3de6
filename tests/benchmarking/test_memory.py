"""condconv_det.benchmarking.memory: peak memory on known allocations, the model-state count."""

import torch
from torch import nn

from condconv_det.benchmarking import model_state_bytes, peak_memory

MiB = 1024 * 1024


def test_peak_memory_of_known_allocations():
    cpu = torch.device("cpu")

    def held():
        a = torch.ones(4 * MiB // 4)  # 4 MiB of float32
        b = torch.ones(2 * MiB // 4)
        return a, b

    def freed_first():
        a = torch.ones(4 * MiB // 4)
        del a
        return torch.ones(2 * MiB // 4)

    assert 6 * MiB <= peak_memory(held, cpu) < 7 * MiB
    # The 4 MiB are freed before the 2 MiB are allocated: the peak is the larger one alone.
    assert 4 * MiB <= peak_memory(freed_first, cpu) < 5 * MiB
    assert peak_memory(lambda: None, cpu) < 64 * 1024


def test_model_state_bytes_counts_parameters_and_momentum():
    model = nn.Linear(10, 20)  # 220 float32 parameters: 880 bytes
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert model_state_bytes(model, optimizer) == 880
    model(torch.randn(3, 10)).sum().backward()
    assert model_state_bytes(model, optimizer) == 2 * 880  # + gradients
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert model_state_bytes(model, optimizer) == 2 * 880  # momentum instead of gradients

"""condconv_det.routing_analysis.collect_routing: one routing vector per image and router, in
execution order, the same whatever the batch size; a model without routers is refused."""

import numpy as np
import pytest
import torch

from condconv_det.layers import CondConvRouter
from condconv_det.routing_analysis import RoutingAnalysisError, collect_routing


class TwoRouters(torch.nn.Module):
    """Takes a list of {"image": (3, H, W)} like a detector; two routers, the deep one
    registered first (the analysis must order layers by execution)."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleDict({name: torch.nn.Module() for name in ("deep", "shallow")})
        for name, experts in (("deep", 4), ("shallow", 2)):
            self.blocks[name].router = CondConvRouter(3, experts)

    def forward(self, batch):
        x = torch.stack([b["image"] for b in batch])
        self.blocks["shallow"].router(x)
        return self.blocks["deep"].router(x * 2)


def records(count: int):
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(3, 6, 6, generator=generator)} for _ in range(count)]


def test_one_vector_per_image_by_depth_whatever_the_batch():
    torch.manual_seed(0)
    model = TwoRouters().eval()
    images = records(5)
    routing = collect_routing(model, dict, images)
    assert list(routing) == ["blocks.shallow", "blocks.deep"]  # execution order
    assert routing["blocks.shallow"].shape == (5, 2) and routing["blocks.deep"].shape == (5, 4)
    assert routing["blocks.deep"].dtype == np.float32
    expected = model(images)
    np.testing.assert_allclose(routing["blocks.deep"], expected.detach().numpy(), rtol=1e-6)
    batched = collect_routing(model, dict, images, batch_size=2)  # batches of 2, 2, 1
    for layer in routing:
        np.testing.assert_allclose(batched[layer], routing[layer], rtol=1e-5, atol=1e-6)
    assert not any(block.router._forward_hooks for block in model.blocks.values())


def test_a_model_without_routers_is_refused():
    static = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(RoutingAnalysisError, match="no CondConv router.*NUM_EXPERTS"):
        collect_routing(static, dict, records(1))

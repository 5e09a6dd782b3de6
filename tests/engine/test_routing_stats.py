"""Routing statistics during training (MODEL.CONDCONV.ROUTING_STATS): scalars in metrics.json on
the logged iterations only, equal to the routers' outputs; nothing attached when off."""

import json
import math
import os

import numpy as np
import pytest
import torch

from condconv_det.config import check_condconv_config, get_cfg
from condconv_det.engine import Trainer
from condconv_det.engine.hooks import RoutingStatsHook
from condconv_det.layers import CondConvRouter
from condconv_det.routing_analysis import RoutingRecorder, routing_entropy

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "shapes", "ssd_condconv_MNv1.yaml"
)
EXPERTS = 2


def _cfg(tmp_path, max_iter, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.MOBILENET.WIDTH_MULT",
            0.25,
            "MODEL.CONDCONV.NUM_EXPERTS",
            EXPERTS,
            "MODEL.CONDCONV.ROUTER_INIT",
            "glorot",
            "DATASETS.TEST",
            (),  # no evaluation at the end
            "DATALOADER.NUM_WORKERS",
            0,
            "SOLVER.IMS_PER_BATCH",
            2,
            "SOLVER.WARMUP_ITERS",
            1,
            "SOLVER.MAX_ITER",
            max_iter,
            "SOLVER.CHECKPOINT_PERIOD",
            1000,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            *opts,
        ]
    )
    return cfg


def _train_with_spy(cfg):
    """Trains; returns, per router call, (iteration, hooks on the router, routing weights)."""
    trainer = Trainer(cfg)
    calls = {}
    for name, m in trainer.model.named_modules():
        if isinstance(m, CondConvRouter):

            def spy(module, inputs, output, name=name[: -len(".router")]):
                calls.setdefault(name, []).append(
                    (trainer.iter, len(module._forward_hooks), output.detach().numpy().copy())
                )

            m.register_forward_hook(spy)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, calls


def test_stats_are_logged_on_logged_iterations_only(shapes, tmp_path):
    # PERIOD 3 over 5 iterations: iterations 2 and 4 (the last) are logged.
    cfg = _cfg(
        tmp_path,
        5,
        "MODEL.CONDCONV.ROUTING_STATS.ENABLED",
        True,
        "MODEL.CONDCONV.ROUTING_STATS.PERIOD",
        3,
    )
    trainer, calls = _train_with_spy(cfg)
    kinds = [type(h) for h in trainer._hooks]
    assert kinds.count(RoutingStatsHook) == 1
    assert kinds.index(RoutingStatsHook) < min(
        i for i, k in enumerate(kinds) if k.__name__ in ("EvalHook", "PeriodicWriter")
    )
    assert len(calls) >= 3
    for name, seen in calls.items():
        # The spy sees its own hook, plus the stats hook's on logged iterations only.
        assert [(it, n) for it, n, _ in seen] == [(0, 1), (1, 1), (2, 2), (3, 1), (4, 2)], name

    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f]
    # detectron2's writers run every 20 iterations and at the last: the last logged values.
    last = next(m for m in metrics if m["iteration"] == 4)
    entropies = []
    for name, seen in calls.items():
        weights = seen[-1][2]  # (batch, E) at iteration 4
        for e in range(EXPERTS):
            got = last[f"routing/{name}/expert{e}"]
            assert got == pytest.approx(float(weights[:, e].mean()), rel=1e-5)
            assert 0.0 <= got <= 1.0
        p = weights / weights.sum(axis=1, keepdims=True)
        # 0 log 0 = 0: the main job's DropExpert zeroes some weights in training.
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        entropy = float(np.mean(-plogp.sum(axis=1)))
        assert last[f"routing/{name}/entropy"] == pytest.approx(entropy, rel=1e-5)
        assert 0.0 <= last[f"routing/{name}/entropy"] <= math.log(EXPERTS) + 1e-6
        entropies.append(entropy)
    assert last["routing/mean_entropy"] == pytest.approx(np.mean(entropies), rel=1e-5)
    stats = ("entropy", *(f"expert{e}" for e in range(EXPERTS)))
    expected_keys = {f"routing/{n}/{s}" for n in calls for s in stats} | {"routing/mean_entropy"}
    assert {k for m in metrics for k in m if k.startswith("routing/")} == expected_keys
    # After training only the spy is left on the routers.
    routers = [r for r in trainer.model.modules() if isinstance(r, CondConvRouter)]
    assert routers and all(len(r._forward_hooks) == 1 for r in routers)


def test_no_router_hooks_when_disabled(shapes, tmp_path):
    cfg = _cfg(tmp_path, 2)
    assert not cfg.MODEL.CONDCONV.ROUTING_STATS.ENABLED  # the default
    trainer, calls = _train_with_spy(cfg)
    assert not any(isinstance(h, RoutingStatsHook) for h in trainer._hooks)
    assert calls and all([n for _, n, _ in seen] == [1, 1] for seen in calls.values())
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        assert not any(k.startswith("routing/") for line in f for k in json.loads(line))


def test_period_is_checked():
    cfg = get_cfg()
    cfg.MODEL.CONDCONV.ROUTING_STATS.PERIOD = 0
    with pytest.raises(ValueError, match="MODEL.CONDCONV.ROUTING_STATS.PERIOD must be >= 1"):
        check_condconv_config(cfg)


def test_recorder_orders_by_execution_and_leaves_no_hooks():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # Registered in the opposite order of execution.
            self.late = torch.nn.Module()
            self.late.router = CondConvRouter(3, 4)
            self.early = torch.nn.Module()
            self.early.router = CondConvRouter(3, 2)

        def forward(self, x):
            return self.early.router(x), self.late.router(x)

    net = Net()
    recorder = RoutingRecorder(net)
    x = torch.randn(5, 3, 8, 8)
    with recorder:
        expected = net(x)
        net(x[:2])
    assert all(not r._forward_hooks for r in recorder.routers.values())
    net(x)  # detached: not recorded
    got = recorder.pop()
    assert list(got) == ["early", "late"]
    assert got["early"].shape == (7, 2) and got["late"].shape == (7, 4)
    torch.testing.assert_close(got["late"][:5], expected[1])
    assert recorder.pop() == {}


def test_entropy_bounds():
    one_hot = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    uniform = torch.full((1, 4), 0.3)
    mixed = torch.tensor([[0.2, 0.6, 0.1, 0.9]])
    assert routing_entropy(one_hot).item() == 0.0
    assert routing_entropy(uniform).item() == pytest.approx(math.log(4))
    p = mixed / mixed.sum()
    assert routing_entropy(mixed).item() == pytest.approx(-(p * p.log()).sum().item())
    assert routing_entropy(torch.zeros(1, 4)).item() == 0.0

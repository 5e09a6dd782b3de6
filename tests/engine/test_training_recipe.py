"""The training side of CondConv's options: the routing-temperature schedule (a function of the
iteration, logged, continued exactly by --resume), the routers' optimizer groups, AdamW, and the
config checks that name the key."""

import json
import os
import re

import pytest
import torch

from condconv_det.config import check_condconv_config, get_cfg
from condconv_det.engine import RoutingTemperatureHook, Trainer, routing_temperature_at
from condconv_det.layers import CondConv2d, CondConvRouter

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "shapes", "ssd_condconv_MNv1.yaml"
)


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
            2,
            "DATASETS.TEST",
            (),
            "DATALOADER.NUM_WORKERS",
            0,
            "SOLVER.IMS_PER_BATCH",
            2,
            "SOLVER.WARMUP_ITERS",
            1,
            "SOLVER.MAX_ITER",
            max_iter,
            "SOLVER.CHECKPOINT_PERIOD",
            3,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            *opts,
        ]
    )
    return cfg


def test_temperature_is_linear_then_constant():
    assert [routing_temperature_at(i, 30.0, 1.0, 30) for i in (0, 1, 29, 30, 100)] == [
        30.0,
        29.0,
        1.0,
        1.0,
        1.0,
    ]
    assert routing_temperature_at(0, 30.0, 2.0, 0) == 2.0
    assert routing_temperature_at(5, 10.0, 1.0, 1) == 1.0
    with pytest.raises(ValueError, match="must be > 0"):
        RoutingTemperatureHook(0.0, 5, end=1.0)
    with pytest.raises(ValueError, match="iters must be >= 0"):
        RoutingTemperatureHook(30.0, -1)


def _train(cfg, resume=False):
    trainer = Trainer(cfg)
    seen = []
    router = next(m for m in trainer.model.modules() if isinstance(m, CondConvRouter))
    router.register_forward_pre_hook(lambda m, inputs: seen.append((trainer.iter, m.temperature)))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer, seen


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_schedule_anneals_every_router_logs_it_and_resume_continues_it(
    shapes, tmp_path, activation
):
    opts = [
        "MODEL.CONDCONV.ROUTING_ACTIVATION",
        activation,
        "MODEL.CONDCONV.ROUTING_TEMPERATURE",
        2.0,
        "MODEL.CONDCONV.TEMPERATURE_SCHEDULE.START",
        8.0,
        "MODEL.CONDCONV.TEMPERATURE_SCHEDULE.ITERS",
        4,
    ]
    expected = {0: 8.0, 1: 6.0, 2: 4.0, 3: 2.0, 4: 2.0}
    trainer, seen = _train(_cfg(tmp_path, 5, *opts))
    assert sum(isinstance(h, RoutingTemperatureHook) for h in trainer._hooks) == 1
    assert seen == sorted(expected.items())
    routers = [m for m in trainer.model.modules() if isinstance(m, CondConvRouter)]
    assert len(routers) > 1 and all(r.temperature == 2.0 for r in routers)
    with open(os.path.join(trainer.cfg.OUTPUT_DIR, "metrics.json")) as f:
        logged = [json.loads(line) for line in f]
    assert logged[-1]["routing/temperature"] == 2.0

    # A run stopped after iteration 2 (checkpoint model_0000002.pth) and resumed continues
    # the schedule where it stopped.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    cfg = _cfg(tmp_path, 5, *opts, "OUTPUT_DIR", str(resumed_dir))
    source = os.path.join(trainer.cfg.OUTPUT_DIR, "model_0000002.pth")
    (resumed_dir / "last_checkpoint").write_text(os.path.basename(source))
    os.link(source, resumed_dir / "model_0000002.pth")
    _, seen = _train(cfg, resume=True)
    assert seen == [(3, 2.0), (4, 2.0)]


def test_no_schedule_hook_by_default(shapes, tmp_path):
    trainer, seen = _train(_cfg(tmp_path, 1))
    assert not any(isinstance(h, RoutingTemperatureHook) for h in trainer._hooks)
    assert seen == [(0, 1.0)]


@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "MODEL.CONDCONV.ROUTING_TEMPERATURE",
            0.0,
            "MODEL.CONDCONV.ROUTING_TEMPERATURE must be > 0",
        ),
        (
            "MODEL.CONDCONV.TEMPERATURE_SCHEDULE.START",
            -1.0,
            "TEMPERATURE_SCHEDULE.START must be > 0",
        ),
        (
            "MODEL.CONDCONV.TEMPERATURE_SCHEDULE.ITERS",
            -5,
            "TEMPERATURE_SCHEDULE.ITERS must be >= 0",
        ),
        ("MODEL.CONDCONV.TEMPERATURE_SCHEDULE.ITERS", 10**9, "must be <= SOLVER.MAX_ITER"),
        ("MODEL.CONDCONV.ROUTER_HIDDEN_RATIO", -0.25, "ROUTER_HIDDEN_RATIO must be >= 0"),
        ("MODEL.CONDCONV.ROUTER_NORM", "GN", "ROUTER_NORM must be one of"),
        ("MODEL.CONDCONV.EXPERT_DROPOUT", 1.0, "EXPERT_DROPOUT must be in [0, 1)"),
        ("MODEL.CONDCONV.EXPERT_INIT", "orthogonal", "EXPERT_INIT must be one of"),
        ("MODEL.CONDCONV.UPCYCLE_FROM_ITERS", -1, "UPCYCLE_FROM_ITERS must be None (as long"),
        ("SOLVER.ROUTER_LR_FACTOR", -1.0, "SOLVER.ROUTER_LR_FACTOR must be >= 0"),
        ("SOLVER.WEIGHT_DECAY_ROUTER", -1e-4, "SOLVER.WEIGHT_DECAY_ROUTER must be >= 0"),
        ("SOLVER.OPTIMIZER", "LAMB", "SOLVER.OPTIMIZER must be one of"),
    ],
)
def test_bad_values_fail_at_build_time_naming_the_key(key, value, message):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([key, value, "MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=re.escape(message)):
        check_condconv_config(cfg)
    with pytest.raises(ValueError, match=re.escape(key)):
        Trainer.build_model(cfg)


def _groups(optimizer):
    return {
        id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]
    }


def test_router_parameters_get_their_own_learning_rate_and_decay():
    cfg = _cfg_model("SOLVER.ROUTER_LR_FACTOR", 0.1, "SOLVER.WEIGHT_DECAY_ROUTER", 0.01)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    groups = _groups(optimizer)
    default = _groups(Trainer.build_optimizer(_cfg_model(), model))
    assert len(groups) == len(default) == sum(1 for p in model.parameters() if p.requires_grad)
    router_params = {
        id(p) for m in model.modules() if isinstance(m, CondConvRouter) for p in m.parameters()
    }
    assert router_params
    for name, p in model.named_parameters():
        lr, decay = groups[id(p)]
        if id(p) in router_params:
            assert (lr, decay) == pytest.approx((cfg.SOLVER.BASE_LR * 0.1, 0.01)), name
        else:
            assert (lr, decay) == default[id(p)], name


def test_adamw_uses_the_same_groups():
    cfg = _cfg_model(
        "SOLVER.OPTIMIZER", "ADAMW", "SOLVER.BASE_LR", 0.002, "SOLVER.BETAS", (0.8, 0.99)
    )
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.99) for g in optimizer.param_groups)
    norms = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    }
    for p in model.parameters():
        lr, decay = _groups(optimizer)[id(p)]
        assert lr == 0.002
        assert decay == (
            cfg.SOLVER.WEIGHT_DECAY_NORM if id(p) in norms else cfg.SOLVER.WEIGHT_DECAY
        )


def test_static_kernel_model_starts_as_a_plain_conv_network():
    cfg = _cfg_model("MODEL.CONDCONV.STATIC_KERNEL", True, "MODEL.CONDCONV.ROUTER_INIT", "glorot")
    model = Trainer.build_model(cfg)
    convs = [m for m in model.modules() if isinstance(m, CondConv2d)]
    assert convs and all(m.static_weight is not None and m.weight.abs().sum() == 0 for m in convs)


def _cfg_model(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.MOBILENET.WIDTH_MULT",
            0.25,
            "MODEL.CONDCONV.NUM_EXPERTS",
            2,
            *opts,
        ]
    )
    return cfg


def test_routing_start_holds_the_routers_until_then_and_resume_keeps_it(shapes, tmp_path):
    from condconv_det.engine import RoutingStartHook

    opts = ["MODEL.CONDCONV.EXPERT_INIT", "shared", "MODEL.CONDCONV.ROUTING_START_ITER", 3]
    trainer = Trainer(_cfg(tmp_path, 5, *opts))
    assert sum(isinstance(h, RoutingStartHook) for h in trainer._hooks) == 1
    routers = [m for m in trainer.model.modules() if isinstance(m, CondConvRouter)]
    seen = []
    routers[0].register_forward_pre_hook(
        lambda m, inputs: seen.append(
            (trainer.iter, sum(float(r.fc.weight.abs().sum()) for r in routers))
        )
    )
    trainer.resume_or_load(resume=False)
    trainer.train()
    # Zero-initialised weights, zero gradients: exactly zero until iteration 3 has stepped.
    assert [w for _, w in seen[:4]] == [0.0, 0.0, 0.0, 0.0] and seen[4][1] > 0
    with open(os.path.join(trainer.cfg.OUTPUT_DIR, "metrics.json")) as f:
        logged = [json.loads(line) for line in f]
    assert logged[-1]["routing/learning"] == 1.0
    with pytest.raises(ValueError, match="ROUTING_START_ITER must be in"):
        check_condconv_config(_cfg(tmp_path, 5, "MODEL.CONDCONV.ROUTING_START_ITER", 5))


def test_a_negative_upcycle_noise_fails_when_the_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match="MODEL.CONDCONV.UPCYCLE_NOISE must be >= 0"):
        check_condconv_config(_cfg(tmp_path, 5, "MODEL.CONDCONV.UPCYCLE_NOISE", -0.5))


def test_upcycled_routers_at_their_init_need_softmax_routing_or_a_static_kernel(tmp_path):
    key = "MODEL.CONDCONV.UPCYCLE_ROUTERS"
    with pytest.raises(ValueError, match=f"{key} must be one of"):
        check_condconv_config(_cfg(tmp_path, 5, key, "glorot"))
    with pytest.raises(ValueError, match=f"{key} needs .*ROUTING_ACTIVATION softmax.*got 'init'"):
        check_condconv_config(_cfg(tmp_path, 5, key, "init"))
    for opts in (("ROUTING_ACTIVATION", "softmax"), ("STATIC_KERNEL", True)):
        check_condconv_config(_cfg(tmp_path, 5, key, "init", f"MODEL.CONDCONV.{opts[0]}", opts[1]))

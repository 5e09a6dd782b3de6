"""MobileNet-family backbones: shapes from the tables, placement of CondConv, freezing."""

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d

from condconv_det.layers import CondConv2d
from condconv_det.layers import _condconv_fast as fast
from condconv_det.modeling.backbone import ARCHS, MobileNet, mobilenet_block_names

ALL_FEATURES = ["stem", "res2", "res3", "res4", "res5"]


def _features(arch):
    return ALL_FEATURES + (["head"] if ARCHS[arch].head_channels else [])


def _condconvs(model):
    return [m for m in model.modules() if isinstance(m, CondConv2d)]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_output_shape_equals_real_outputs(arch):
    torch.manual_seed(0)
    model = MobileNet(
        arch, out_features=_features(arch), width_mult=0.5 if "tiny" not in arch else 1.0
    ).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        outputs = model(x)
    shapes = model.output_shape()
    assert sorted(outputs) == sorted(shapes)
    for name, out in outputs.items():
        spec = shapes[name]
        assert out.shape == (2, spec.channels, 96 // spec.stride, 64 // spec.stride), name


@pytest.mark.parametrize("arch", ["tiny_v1", "tiny_v2", "tiny_effnet"])
def test_condconv_goes_where_the_table_says(arch):
    table = ARCHS[arch]
    model = MobileNet(arch, out_features=["res5"])
    blocks = [b for name in model.stage_names for b in getattr(model, name)][1:]  # minus stem
    expected = [row.experts for row in table.stages for _ in range(row.repeats)]
    assert [getattr(b, "num_experts") for b in blocks] == expected
    for block, experts in zip(blocks, expected):
        convs = _condconvs(block)
        assert (len(convs) > 0) == (experts > 0)
        assert all(c.num_experts == experts for c in convs)
        # Block routing: one router on the block's input feeds its CondConvs.
        assert (block.router is not None) == (experts > 0)


def test_static_twin_has_no_condconv_and_same_other_shapes():
    condconv = MobileNet("tiny_v2", out_features=["res5"])
    static = MobileNet("tiny_v2", out_features=["res5"], num_experts=0)
    assert _condconvs(static) == [] and len(_condconvs(condconv)) > 0
    assert not any("router" in n for n, _ in static.named_parameters())
    s = {n: p.shape for n, p in static.named_parameters()}
    c = {n: p.shape for n, p in condconv.named_parameters() if "router" not in n}
    assert sorted(s) == sorted(c)
    for name, shape in s.items():
        assert c[name] == shape or c[name][1:] == shape, name  # CondConv weights: (E, *shape)


def test_condconv_stages_and_experts_override_the_table():
    model = MobileNet("tiny_v2", out_features=["res5"], condconv_stages=[1], num_experts=5)
    blocks = [b for name in model.stage_names for b in getattr(model, name)][1:]
    rows = [i for i, row in enumerate(ARCHS["tiny_v2"].stages) for _ in range(row.repeats)]
    assert [b.num_experts for b in blocks] == [5 if r == 1 else 0 for r in rows]


def test_layer_routing_gives_each_conv_a_router():
    model = MobileNet("tiny_effnet", out_features=["res5"], routing="layer")
    for conv in _condconvs(model):
        assert conv.router is not None
    for block in model.res5:
        assert block.router is None
    out = model(torch.randn(2, 3, 64, 64))["res5"]
    out.mean().backward()
    assert all(
        p.grad is not None for n, p in model.named_parameters() if "router" in n and "res5" in n
    )


def test_unused_stages_are_not_built():
    full = MobileNet("mobilenet_v2", out_features=["res5"])
    short = MobileNet("mobilenet_v2", out_features=["res3"])
    assert short.stage_names == ["stem", "res2", "res3"]
    assert not hasattr(short, "res4") and short.head is None
    assert (
        sum(p.numel() for p in short.parameters()) < sum(p.numel() for p in full.parameters()) / 10
    )


@pytest.mark.parametrize("arch,depth_mult", [(a, 1.0) for a in sorted(ARCHS)] + [("tiny_v2", 1.6)])
def test_block_names_from_the_table_are_those_of_a_full_backbone(arch, depth_mult):
    full = MobileNet(arch, depth_mult=depth_mult, out_features=["res5"], width_mult=0.25)
    assert mobilenet_block_names(arch, depth_mult) == full.block_names()
    assert mobilenet_block_names(ARCHS[arch], depth_mult) == full.block_names()
    with pytest.raises(ValueError, match="depth_mult must be > 0"):
        mobilenet_block_names(arch, 0.0)


def test_freeze_at_two_freezes_stem_and_res2():
    model = MobileNet("tiny_v2", out_features=["res3", "res5"], freeze_at=2)
    for name in ("stem", "res2"):
        stage = getattr(model, name)
        assert all(not p.requires_grad for p in stage.parameters())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in stage.modules())
    assert all(p.requires_grad for p in model.res3.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    assert all(p.grad is None for p in model.res2.parameters())
    assert all(p.grad is not None for p in model.res3.parameters())
    # Frozen statistics do not move in training mode.
    for key, value in model.state_dict().items():
        if key.startswith(("stem", "res2")):
            torch.testing.assert_close(value, before[key])


# Official EfficientNet-CondConv release: params 5.3M / 13.3M / 24.0M (with the 1000-way
# classifier). Backbone ("head" feature) + classifier must match within 1%.
@pytest.mark.parametrize("experts,params", [(0, 5.3e6), (4, 13.3e6), (8, 24.0e6)])
def test_efficientnet_b0_parameter_counts(experts, params):
    model = MobileNet("efficientnet_b0", out_features=["head"], num_experts=experts)
    classifier = 1280 * 1000 + 1000
    total = sum(p.numel() for p in model.parameters()) + classifier
    assert abs(total - params) / params < 0.01, total


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(arch="mobilenet_v9"), "unknown MobileNet arch"),
        (dict(condconv_stages=[9]), "out of range"),
        (dict(num_experts=-1), "num_experts must be >= 0"),
        (dict(out_features=["res6"]), "out_features must be"),
        (dict(arch="mobilenet_v1", out_features=["head"]), "out_features must be"),
        (dict(routing="stage"), "routing must be one of"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MobileNet(**kwargs)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("WIDTH_MULT", 0.0, "MODEL.MOBILENET.WIDTH_MULT must be > 0"),
        ("DEPTH_MULT", -1.0, "MODEL.MOBILENET.DEPTH_MULT must be > 0"),
        ("BN_EPS", 0.0, "MODEL.MOBILENET.BN_EPS must be > 0"),
        ("PADDING", "same", "MODEL.MOBILENET.PADDING must be"),
        ("DROP_PATH_RATE", 1.0, "MODEL.MOBILENET.DROP_PATH_RATE must be in"),
    ],
)
def test_mobilenet_config_values_out_of_range_name_the_key(key, value, message):
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    from condconv_det import add_condconv_config
    from condconv_det.modeling.backbone import build_condconv_mobilenet_backbone

    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.MODEL.MOBILENET[key] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_condconv_mobilenet_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("init", ["glorot", "zeros"])
def test_router_init_key_reaches_the_backbone_routers(init):
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    from condconv_det import add_condconv_config
    from condconv_det.layers import CondConvRouter
    from condconv_det.modeling.backbone import build_condconv_mobilenet_backbone

    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.MODEL.MOBILENET.WIDTH_MULT = 0.25
    cfg.MODEL.CONDCONV.ROUTER_INIT = init
    routers = [
        m
        for m in build_condconv_mobilenet_backbone(cfg, ShapeSpec(channels=3)).modules()
        if isinstance(m, CondConvRouter)
    ]
    assert routers and all((r.fc.weight.abs().sum() == 0) == (init == "zeros") for r in routers)
    cfg.MODEL.CONDCONV.ROUTER_INIT = "normal"
    with pytest.raises(ValueError, match="MODEL.CONDCONV.ROUTER_INIT"):
        build_condconv_mobilenet_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize(
    "arch, routing, padding",
    [
        ("tiny_v2", "block", "symmetric"),
        ("tiny_v2", "layer", "symmetric"),
        ("tiny_v2", "layer", "tf_same"),
        ("tiny_v1", "block", "tf_same"),
        ("tiny_effnet", "block", "tf_same"),
    ],
)
def test_scripted_backbone_equals_eager(arch, routing, padding):
    torch.manual_seed(0)
    out = ("res2", "res4", "res5", "head") if MobileNet.has_head(arch) else ("stem", "res3", "res5")
    model = MobileNet(arch, routing=routing, padding=padding, out_features=out).eval()
    scripted = torch.jit.script(model)
    assert set(scripted.state_dict()) == set(model.state_dict())
    # An odd size: "tf_same" pads stride-2 convs by one pixel more at the bottom / right.
    for x in (torch.randn(1, 3, 64, 64), torch.randn(3, 3, 61, 67)):
        # The same products bit for bit without the eager native mix; with it (the CPU's
        # inference mix), the same up to the order of the experts' sums.
        with torch.no_grad(), fast.native_mix(False):
            want, got = model(x), scripted(x)
        with torch.no_grad():
            native = model(x)
        assert list(got) == list(want) == list(native) == list(out)
        for name in out:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
            torch.testing.assert_close(native[name], want[name], rtol=1e-4, atol=1e-5)

"""CondConv-ResNet: detectron2's ResNet with CondConv blocks where asked, plain elsewhere."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from condconv_det import add_condconv_config
from condconv_det.layers import CondConv2d
from condconv_det.modeling.backbone import (
    CondConvBasicBlock,
    CondConvBottleneckBlock,
    build_condconv_resnet_backbone,
)
from condconv_det.modeling.conv import ROUTING_SCOPES

INPUT = ShapeSpec(channels=3)


def _cfg(depth=50, experts=8, stages=("res5",), out=("res2", "res3", "res4", "res5"), **resnets):
    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out)
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key] = value
    cfg.MODEL.CONDCONV.NUM_EXPERTS = experts
    cfg.MODEL.CONDCONV.RESNET_STAGES = list(stages)
    return cfg


@pytest.mark.parametrize("depth", [18, 50])
def test_zero_experts_is_detectron2_resnet(depth):
    cfg = _cfg(depth, experts=0)
    ours = build_condconv_resnet_backbone(cfg, INPUT)
    theirs = build_resnet_backbone(cfg, INPUT)
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    theirs_shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours_shapes == theirs_shapes
    # A detectron2 checkpoint loads strictly and gives the same outputs.
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(1, 3, 64, 64)
    for name, out in ours(x).items():
        torch.testing.assert_close(out, theirs(x)[name])


@pytest.mark.parametrize(
    "depth,block,plain",
    [(18, CondConvBasicBlock, BasicBlock), (50, CondConvBottleneckBlock, BottleneckBlock)],
)
def test_condconv_only_in_chosen_stages(depth, block, plain):
    model = build_condconv_resnet_backbone(_cfg(depth, experts=4, stages=("res3", "res5")), INPUT)
    for name, stage in zip(model.stage_names, model.stages):
        kinds = {type(b) for b in stage}
        assert kinds == ({block} if name in ("res3", "res5") else {plain}), name
    convs = [m for m in model.res5.modules() if isinstance(m, CondConv2d)]
    assert convs and all(c.weight.shape[0] == 4 for c in convs)
    # The projection shortcut stays static.
    assert not isinstance(model.res5[0].shortcut, CondConv2d)
    # Non-CondConv stages keep detectron2's names and shapes.
    theirs = build_resnet_backbone(_cfg(depth, experts=0), INPUT).state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("stem", "res2", "res4")):
            assert theirs[key].shape == value.shape


@pytest.mark.parametrize("routing", ROUTING_SCOPES)
def test_output_shape_forward_backward_and_every_parameter_learns(routing):
    cfg = _cfg(18, experts=2, stages=("res4", "res5"))
    cfg.MODEL.CONDCONV.ROUTING = routing
    model = build_condconv_resnet_backbone(cfg, INPUT)
    outputs = model(torch.randn(2, 3, 64, 96))
    for name, spec in model.output_shape().items():
        assert outputs[name].shape == (2, spec.channels, 64 // spec.stride, 96 // spec.stride)
    sum(o.square().mean() for o in outputs.values()).backward()
    frozen_at = cfg.MODEL.BACKBONE.FREEZE_AT  # detectron2's default 2: stem and res2 frozen
    assert frozen_at == 2
    for name, param in model.named_parameters():
        trainable = not name.startswith(("stem", "res2"))
        assert param.requires_grad == trainable, name
        if trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    routers = [n for n, _ in model.named_parameters() if "router" in n]
    if routing == "block":
        assert all(".router." in n and ".conv" not in n for n in routers)
    else:
        assert all(".conv" in n for n in routers)


def test_unused_stages_are_not_built():
    model = build_condconv_resnet_backbone(_cfg(50, out=("res3",)), INPUT)
    assert list(model.stage_names) == ["res2", "res3"]
    assert not hasattr(model, "res4") and not hasattr(model, "res5")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("NUM_EXPERTS", -1, "MODEL.CONDCONV.NUM_EXPERTS must be >= 0"),
        ("RESNET_STAGES", ["res6"], "MODEL.CONDCONV.RESNET_STAGES must list stages"),
        ("ROUTING", "stage", "MODEL.CONDCONV.ROUTING must be"),
        ("ROUTING_ACTIVATION", "relu", "MODEL.CONDCONV.ROUTING_ACTIVATION must be"),
        ("ROUTING_TEMPERATURE", -5.0, "MODEL.CONDCONV.ROUTING_TEMPERATURE must be > 0"),
        ("ROUTING_DROPOUT", 1.5, "MODEL.CONDCONV.ROUTING_DROPOUT must be in"),
    ],
)
def test_config_values_out_of_range_name_the_key(key, value, message):
    cfg = _cfg(18)
    cfg.MODEL.CONDCONV[key] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_condconv_resnet_backbone(cfg, INPUT)

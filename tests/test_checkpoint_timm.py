"""timm's EfficientNet-CondConv weights in our EfficientNet: the same function, or a clear error.

The timm models are built with random weights (nothing is downloaded), made such that every
weight shows in the logits: random norm affines, non-zero biases, routing that differs per
example. Comparisons run in float64, where a correct conversion differs by rounding at most,
and a random network cannot amplify float32 rounding into a tolerance that would hide an error.
"""

import pytest
import timm
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from timm.layers import pad_same

from condconv_det import add_condconv_config
from condconv_det.checkpoint import (
    CheckpointMismatchError,
    TimmEfficientNet,
    load_checkpoint_strict,
    timm_efficientnet_to_condconv,
    timm_efficientnet_variant,
)
from condconv_det.layers import CondConvRouter
from condconv_det.modeling.backbone import (
    ARCHS,
    MobileNet,
    build_condconv_mobilenet_backbone,
    mobilenet_block_names,
)
from condconv_det.modeling.backbone.mobilenet import tf_same_pad
from condconv_det.modeling.classifier import build_classifier


def randomized_timm_model(name: str, images: torch.Tensor, **kwargs) -> torch.nn.Module:
    """A timm model of ``images``' dtype, in eval mode, whose every weight matters.

    Norm statistics are those of ``images``: with random ones the activations of randomly
    initialised experts grow block after block. The blocks' last norms are scaled down, so that
    residual branches stay small next to their shortcuts. Both keep the logits O(1), given
    enough pixels per channel at stride 32 for the statistics (e.g. 4 images of 96x64).
    """
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).to(images.dtype)
    g = torch.Generator().manual_seed(1)

    def rand(shape, scale, offset=0.0):
        return (
            torch.randn(shape, generator=g, dtype=torch.float64).to(images.dtype) * scale + offset
        )

    with torch.no_grad():
        for module_name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(rand(module.weight.shape, 0.2, 1.0))
                module.bias.copy_(rand(module.bias.shape, 0.1))
                module.reset_running_stats()
                module.momentum = None  # cumulative average: the statistics of exactly `images`
            elif module_name.endswith("routing_fn"):
                # Logits of std ~3: routing weights spread over (0, 1), differently per example.
                module.weight.copy_(rand(module.weight.shape, 3.0 / module.in_features**0.5))
                module.bias.copy_(rand(module.bias.shape, 1.0))
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.copy_(rand(module.bias.shape, 0.1))
        for block in (block for stage in model.blocks for block in stage):
            [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1].weight.mul_(0.3)
        model.train()(images)
    return model.eval()


def _images(size, batch=4):
    return torch.randn(
        batch, 3, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )


def _classifier_names(renamed):
    return {k if k.startswith("fc.") else f"backbone.{k}": v for k, v in renamed.items()}


def _converted(source: torch.nn.Module, variant: TimmEfficientNet, **overrides) -> torch.nn.Module:
    kwargs = {**variant.mobilenet_kwargs(), **overrides}
    ours = build_classifier(variant.arch, **kwargs).double().eval()
    renamed = timm_efficientnet_to_condconv(source.state_dict(), ours.backbone.block_names())
    load_checkpoint_strict(ours, _classifier_names(renamed))
    return ours


@pytest.mark.parametrize(
    "name,size",
    [
        ("efficientnet_cc_b0_4e", (64, 64)),
        # tf_ port: TensorFlow "SAME" padding, which differs for odd and even sizes.
        ("tf_efficientnet_cc_b0_8e", (71, 64)),
        ("efficientnet_cc_b1_8e", (96, 64)),
        ("efficientnet_b0", (64, 64)),  # timm's static EfficientNet-B0: our static twin
    ],
)
def test_converted_timm_model_computes_the_same_logits(name, size):
    images = _images(size)
    source = randomized_timm_model(name, images)
    variant = timm_efficientnet_variant(name)
    ours = _converted(source, variant)
    routing = []
    for router in (m for m in ours.modules() if isinstance(m, CondConvRouter)):
        router.register_forward_hook(lambda module, inputs, output: routing.append(output))
    with torch.no_grad():
        want = source(images)
        got = ours(images)
    assert 0.5 < want.abs().max() < 10  # a real signal, and a well-conditioned one
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)
    if variant.num_experts:
        # Examples were really routed differently.
        assert max(float(r.std(dim=0).max()) for r in routing) > 0.1
    if variant.padding == "tf_same":
        # The test can tell the paddings apart.
        symmetric = _converted(source, variant, padding="symmetric")
        with torch.no_grad():
            assert not torch.allclose(symmetric(images), want, rtol=1e-3, atol=1e-3)


def test_float32_batch_of_one():
    # One example takes CondConv's single-kernel path; float32 is what the models run in.
    images = _images((64, 64))
    source = randomized_timm_model("efficientnet_cc_b0_4e", images)
    ours = _converted(source, timm_efficientnet_variant("efficientnet_cc_b0_4e"))
    with torch.no_grad():
        x = images[:1].float()
        torch.testing.assert_close(ours.float()(x), source.float()(x), rtol=1e-4, atol=1e-4)


def test_a_checkpoint_of_another_variant_is_a_clear_error():
    eight = timm.create_model("efficientnet_cc_b0_8e", pretrained=False).state_dict()
    four = build_classifier("efficientnet_b0", num_experts=4)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches") as info:
        load_checkpoint_strict(
            four,
            _classifier_names(timm_efficientnet_to_condconv(eight, four.backbone.block_names())),
        )
    # The first CondConv block: stage 4 (112 channels), the fourth block at stride 16.
    assert "backbone.res4.3.router.fc.weight: checkpoint (8, 80) vs model (4, 80)" in str(
        info.value
    )
    assert (
        "backbone.res4.3.expand.weight: checkpoint (8, 480, 80, 1, 1) vs model (4, 480, 80, 1, 1)"
        in str(info.value)
    )

    deeper = timm.create_model("efficientnet_b1", pretrained=False).state_dict()
    with pytest.raises(
        CheckpointMismatchError, match="the checkpoint has 23 blocks, the target 16"
    ):
        timm_efficientnet_to_condconv(deeper, four.backbone.block_names())
    with pytest.raises(CheckpointMismatchError, match="unexpected key"):
        timm_efficientnet_to_condconv(
            {**eight, "conv_extra.weight": torch.zeros(1)}, four.backbone.block_names()
        )


@pytest.mark.parametrize(
    "name,expected",
    [
        ("efficientnet_cc_b0_4e", ("efficientnet_b0", 4, 1e-5, "symmetric")),
        ("efficientnet_cc_b0_8e", ("efficientnet_b0", 8, 1e-5, "symmetric")),
        ("efficientnet_cc_b1_8e.ra_in1k", ("efficientnet_b1", 8, 1e-5, "symmetric")),
        ("tf_efficientnet_cc_b0_4e", ("efficientnet_b0", 4, 1e-3, "tf_same")),
        ("tf_efficientnet_cc_b1_8e.in1k", ("efficientnet_b1", 8, 1e-3, "tf_same")),
        ("tf_efficientnet_b1", ("efficientnet_b1", 0, 1e-3, "tf_same")),
    ],
)
def test_timm_model_names(name, expected):
    assert timm_efficientnet_variant(name) == TimmEfficientNet(*expected)


def test_every_timm_efficientnet_cc_model_is_known():
    names = timm.list_models("*efficientnet_cc_*")
    assert len(names) == 6
    for name in names:
        timm_efficientnet_variant(name)
    for name in ("efficientnet_b2", "efficientnet_cc_b2_8e", "mobilenetv3_large_100"):
        with pytest.raises(ValueError, match="not a timm EfficientNet"):
            timm_efficientnet_variant(name)


@pytest.mark.parametrize("size", range(1, 10))
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 2), (1, 2)])
def test_tf_same_pad_matches_timm(size, kernel, stride):
    x = torch.randn(1, 2, size, size + 1)
    padded = tf_same_pad(x, (kernel, kernel), (stride, stride))
    torch.testing.assert_close(
        padded, pad_same(x, [kernel, kernel], [stride, stride]), rtol=0, atol=0
    )
    out = torch.nn.functional.conv2d(padded, torch.ones(2, 2, kernel, kernel), stride=stride)
    assert out.shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))  # ceil(size / stride)


def test_efficientnet_b1_is_b0_deeper():
    assert [row.repeats for row in ARCHS["efficientnet_b1"].stages] == [2, 3, 3, 4, 4, 5, 2]
    b1 = MobileNet("efficientnet_b1", num_experts=0, out_features=["head"])
    deeper_b0 = MobileNet("efficientnet_b0", num_experts=0, depth_mult=1.1, out_features=["head"])
    shapes = lambda model: {k: v.shape for k, v in model.state_dict().items()}  # noqa: E731
    assert shapes(b1) == shapes(deeper_b0)


def test_unbuilt_blocks_are_named_as_if_built():
    full = MobileNet("efficientnet_b0", num_experts=0, out_features=["head"])
    short = MobileNet("efficientnet_b0", num_experts=0, out_features=["res3"])
    assert mobilenet_block_names("efficientnet_b0") == full.block_names()
    assert short.block_names() == full.block_names()[: len(short.block_names())] and not hasattr(
        short, "res4"
    )


def test_config_keys_reach_the_backbone():
    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.MODEL.MOBILENET.ARCH = "efficientnet_b0"
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["res5"]
    # Set as attributes: works before and after condconv_det.config declares these keys.
    cfg.MODEL.MOBILENET.DEPTH_MULT = 1.1
    cfg.MODEL.MOBILENET.BN_EPS = 1e-5
    cfg.MODEL.MOBILENET.PADDING = "tf_same"
    backbone = build_condconv_mobilenet_backbone(cfg, ShapeSpec(channels=3))
    assert len(backbone.block_names()) == 23
    assert backbone.stem[0].norm.eps == 1e-5
    assert backbone.stem[0].padding == (0, 0)  # "tf_same": padded at run time
    assert backbone(torch.randn(1, 3, 65, 63))["res5"].shape[-2:] == (3, 2)

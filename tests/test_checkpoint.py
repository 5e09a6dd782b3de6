"""Pretrained weights: torchvision / detectron2 checkpoints into static and CondConv models."""

import pytest
import torch
import torchvision

from condconv_det.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint_strict,
    torchvision_mobilenet_v2_to_condconv,
    torchvision_resnet_to_detectron2,
    upcycle_state_dict,
)
from condconv_det.layers import CondConv2d
from condconv_det.modeling.classifier import build_classifier


def _randomize_bn(model):
    # Random statistics, so that a wrongly mapped norm cannot go unnoticed.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def _classifier_names(renamed):
    return {k if k.startswith("fc.") else f"backbone.{k}": v for k, v in renamed.items()}


SOURCES = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "resnet50": lambda: torchvision.models.resnet50(),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
}


def _convert(arch, source, target):
    sd = source.state_dict()
    if arch == "mobilenet_v2":
        return _classifier_names(
            torchvision_mobilenet_v2_to_condconv(sd, target.backbone.block_names())
        )
    return _classifier_names(torchvision_resnet_to_detectron2(sd))


@pytest.mark.parametrize("arch", sorted(SOURCES))
def test_torchvision_into_static_and_upcycled_condconv_models(arch):
    torch.manual_seed(0)
    source = _randomize_bn(SOURCES[arch]())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want = source(x)

    static = build_classifier(arch, num_experts=0).eval()
    load_checkpoint_strict(static, _convert(arch, source, static))
    with torch.no_grad():
        torch.testing.assert_close(static(x), want, rtol=1e-4, atol=1e-4)

    kwargs = {} if arch == "mobilenet_v2" else {"condconv_stages": ("res4", "res5")}
    condconv = build_classifier(arch, num_experts=4, **kwargs).eval()
    load_checkpoint_strict(condconv, upcycle_state_dict(_convert(arch, source, condconv), condconv))
    with torch.no_grad():
        # float32 rounding of a different summation order, relative to the logits' scale (the
        # random ResNet-50's reach ~700); in float64 the difference is ~1e-12.
        atol = max(1e-4, 2e-6 * want.abs().max().item())
        torch.testing.assert_close(condconv(x), want, rtol=1e-4, atol=atol)
    # Experts are perturbed (so they can specialise) but mix back to the pretrained kernel.
    conv = next(m for m in condconv.modules() if isinstance(m, CondConv2d))
    assert not torch.equal(conv.weight[0], conv.weight[1])


@pytest.mark.parametrize("activation,experts", [("sigmoid", 1), ("sigmoid", 8), ("softmax", 3)])
def test_upcycled_routing_reproduces_the_static_kernel(activation, experts):
    from condconv_det.layers import RoutedCondConv2d

    torch.manual_seed(0)
    static = torch.nn.Conv2d(8, 8, 3, padding=1)
    layer = RoutedCondConv2d(8, 8, 3, padding=1, num_experts=experts, routing_activation=activation)
    sd = upcycle_state_dict(static.state_dict(), layer)
    load_checkpoint_strict(layer, sd)
    x = torch.randn(3, 8, 7, 7)
    torch.testing.assert_close(layer(x), static(x), rtol=1e-5, atol=1e-5)
    # The router still learns: its weight gets a gradient despite starting at zero.
    layer(x).square().sum().backward()
    assert layer.router.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("experts", [2, 8])
def test_upcycled_sigmoid_layer_learns_at_the_static_learning_rate(experts):
    # Under uniform routing r the mixed kernel sum_i r W_i moves by E r^2 times the static
    # kernel's SGD step; upcycling starts the routing where that factor is 1, so the first
    # steps of the upcycled layer (routing held) are the static layer's steps.
    from condconv_det.layers import RoutedCondConv2d

    torch.manual_seed(0)
    static = torch.nn.Conv2d(8, 8, 3, padding=1)
    layer = RoutedCondConv2d(8, 8, 3, padding=1, num_experts=experts, routing_activation="sigmoid")
    load_checkpoint_strict(layer, upcycle_state_dict(static.state_dict(), layer, noise=0.0))
    layer.router.requires_grad_(False)
    x, target = torch.randn(3, 8, 7, 7), torch.randn(3, 8, 7, 7)
    params = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    opts = [torch.optim.SGD(params(m), lr=0.1) for m in (static, layer)]
    for _ in range(3):
        for m, opt in zip((static, layer), opts):
            opt.zero_grad()
            (m(x) - target).square().mean().backward()
            opt.step()
    torch.testing.assert_close(layer(x), static(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_upcycling_into_a_static_kernel_keeps_the_kernel_and_zero_experts(bias):
    from condconv_det.layers import RoutedCondConv2d, configure_condconv

    torch.manual_seed(0)
    static = torch.nn.Conv2d(8, 8, 3, padding=1, bias=bias)
    layer = configure_condconv(
        torch.nn.Sequential(RoutedCondConv2d(8, 8, 3, padding=1, num_experts=4, bias=bias)),
        static_kernel=True,
    )
    router_before = layer[0].router.fc.weight.clone()
    sd = upcycle_state_dict({f"0.{k}": v for k, v in static.state_dict().items()}, layer)
    assert "0.router.fc.weight" not in sd  # the routers keep their own (differing) init
    load_checkpoint_strict(layer, sd, ignore=[r"router"])
    x = torch.randn(3, 8, 7, 7)
    torch.testing.assert_close(layer(x), static(x), rtol=1e-5, atol=1e-5)
    assert layer[0].weight.abs().sum() == 0
    torch.testing.assert_close(layer[0].router.fc.weight, router_before)
    # Experts learn from step 0; they differ because the routers route each expert differently.
    layer(x).square().sum().backward()
    grad = layer[0].weight.grad
    assert grad.abs().sum() > 0 and not torch.allclose(grad[0], grad[1])


def test_checkpoint_that_does_not_fit_lists_every_difference():
    model = build_classifier("resnet18", num_experts=0)
    sd = _classifier_names(
        torchvision_resnet_to_detectron2(torchvision.models.resnet18().state_dict())
    )
    sd.pop("backbone.res2.0.conv1.weight")
    sd["backbone.extra.weight"] = torch.zeros(1)
    sd["fc.weight"] = torch.zeros(10, 512)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint_strict(model, sd)
    message = str(info.value)
    assert "missing keys (1):" in message and "backbone.res2.0.conv1.weight" in message
    assert "unexpected keys (1):" in message and "backbone.extra.weight" in message
    assert "fc.weight: checkpoint (10, 512) vs model (1000, 512)" in message
    assert "tools/convert_pretrained.py" in message


def _to_caffe2_names(d2_state_dict):
    """detectron2 ResNet names -> the MSRA Caffe2 names of detectron2's ImageNet R-50.pkl."""
    blobs = {}
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
    suffix = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}
    for key, value in d2_state_dict.items():
        if "running" in key or "num_batches" in key:
            continue
        if key.startswith("stem."):
            name = {
                "stem.conv1.weight": "conv1_w",
                "stem.conv1.norm.weight": "res_conv1_bn_s",
                "stem.conv1.norm.bias": "res_conv1_bn_b",
            }[key]
        else:
            stage, block, conv, rest = key.split(".", 3)
            name = f"{stage}_{block}_{branch[conv]}_{suffix[rest]}"
        blobs[name] = value.numpy()
    return {"blobs": blobs}


def test_msra_pkl_loads_into_a_condconv_model_through_the_checkpointer(tmp_path):
    import pickle

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    from condconv_det import add_condconv_config
    from condconv_det.checkpoint import CondConvCheckpointer
    from condconv_det.modeling.backbone import build_condconv_resnet_backbone

    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.RESNETS.NORM = "FrozenBN"  # the MSRA models' norm: affine only
    torch.manual_seed(0)
    cfg.MODEL.CONDCONV.NUM_EXPERTS = 0
    static = build_condconv_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    for name, param in static.named_parameters():  # a "pretrained" static model
        param.data.normal_(0, 0.05) if param.dim() > 1 else param.data.uniform_(0.5, 1.5)
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump(_to_caffe2_names(static.state_dict()), f)

    # The reference: the static model loaded by detectron2's own checkpointer (which also fills
    # in the norms' statistics that the Caffe2 file lacks).
    reference = build_condconv_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    DetectionCheckpointer(reference).load(str(tmp_path / "R-50.pkl"))
    cfg.MODEL.CONDCONV.NUM_EXPERTS = 4
    condconv = build_condconv_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    CondConvCheckpointer(condconv).load(str(tmp_path / "R-50.pkl"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = reference(x)["res5"]
        assert want.abs().max() > 0  # a real signal
        torch.testing.assert_close(condconv(x)["res5"], want, rtol=1e-4, atol=1e-4)
    # detectron2's own checkpointer would have left the CondConv layers untrained.
    plain = build_condconv_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    DetectionCheckpointer(plain).load(str(tmp_path / "R-50.pkl"))
    with torch.no_grad():
        assert not torch.allclose(plain(x)["res5"], want, rtol=1e-2, atol=1e-2)


def test_mobilenet_v2_weights_for_a_mobilenet_v1_model_are_a_clear_error():
    from condconv_det.modeling.backbone import MobileNet

    v1 = MobileNet("mobilenet_v1", num_experts=0)
    with pytest.raises(CheckpointMismatchError, match="MODEL.MOBILENET.ARCH mobilenet_v2"):
        torchvision_mobilenet_v2_to_condconv(
            torchvision.models.mobilenet_v2().state_dict(), v1.block_names()
        )


@pytest.mark.parametrize(
    "key", ["features.3.conv.4.weight", "features.1.conv.3.weight", "features.0.2.weight"]
)
def test_mobilenet_v2_key_without_a_counterpart_is_a_clear_error(key):
    from condconv_det.modeling.backbone import MobileNet

    v2 = MobileNet("mobilenet_v2", num_experts=0, out_features=["head"])
    state_dict = {**torchvision.models.mobilenet_v2().state_dict(), key: torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match=f"unexpected .* key '{key}'"):
        torchvision_mobilenet_v2_to_condconv(state_dict, v2.block_names())

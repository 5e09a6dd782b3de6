"""tools/convert_pretrained.py: torchvision / timm weights -> MODEL.WEIGHTS of a CondConv model."""

import pytest
import timm
import torch
import torchvision
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from safetensors.torch import save_file

from condconv_det import add_condconv_config
from condconv_det.checkpoint import load_checkpoint_strict
from condconv_det.modeling.classifier import build_classifier
from tests.tools import load_tool

OPTS = [
    "MODEL.BACKBONE.NAME",
    "build_condconv_retinanet_resnet_fpn_backbone",
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.RESNETS.STRIDE_IN_1X1",
    "False",
    "MODEL.RESNETS.NORM",
    "BN",
    "MODEL.CONDCONV.NUM_EXPERTS",
    "4",
]


def _cfg(experts):
    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(OPTS)
    cfg.MODEL.CONDCONV.NUM_EXPERTS = experts
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_torchvision_resnet_into_condconv_retinanet(tmp_path, capsys):
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    config = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    tool = load_tool("convert_pretrained")
    out = str(tmp_path / "r18_cc4.pth")
    assert (
        tool.main(
            [
                "--source",
                "torchvision-resnet",
                "--input",
                str(tmp_path / "r18.pth"),
                "--output",
                out,
                "--config-file",
                config,
            ]
            + OPTS
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out

    # Loaded through detectron2's checkpointer (what MODEL.WEIGHTS does), the CondConv bottom-up
    # computes what torchvision's static ResNet computes.
    model = build_model(_cfg(4)).eval()
    DetectionCheckpointer(model).load(out)
    bottom_up = model.backbone.bottom_up
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = bottom_up(x)["res5"]
        s = source.eval()
        want = s.layer4(s.layer3(s.layer2(s.layer1(s.maxpool(s.relu(s.bn1(s.conv1(x))))))))
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_clear_errors(tmp_path):
    tool = load_tool("convert_pretrained")
    with pytest.raises(SystemExit, match="is not a file"):
        tool.main(
            [
                "--source",
                "torchvision-resnet",
                "--input",
                str(tmp_path / "nope.pth"),
                "--output",
                str(tmp_path / "o.pth"),
                "--arch",
                "resnet18",
            ]
        )
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(SystemExit, match="shape mismatches"):
        tool.main(
            [
                "--source",
                "torchvision-resnet",
                "--input",
                str(tmp_path / "r18.pth"),
                "--output",
                str(tmp_path / "o.pth"),
                "--arch",
                "resnet50",
            ]
        )


def _timm_source(name, images, tmp_path, **kwargs):
    from tests.test_checkpoint_timm import randomized_timm_model

    source = randomized_timm_model(name, images, **kwargs)
    path = str(tmp_path / "model.safetensors")  # as timm and the Hugging Face hub distribute it
    save_file(source.state_dict(), path)
    return source, path


def test_timm_efficientnet_cc_into_its_classifier(tmp_path, capsys):
    images = torch.randn(4, 3, 71, 64, generator=torch.Generator().manual_seed(0))
    source, path = _timm_source("tf_efficientnet_cc_b0_4e", images, tmp_path)
    out = str(tmp_path / "cc4.pth")
    tool = load_tool("convert_pretrained")
    assert (
        tool.main(
            [
                "--source",
                "timm-efficientnet",
                "--input",
                path,
                "--timm-model",
                "tf_efficientnet_cc_b0_4e",
                "--output",
                out,
            ]
        )
        == 0
    )
    assert "note:" not in capsys.readouterr().out  # the classifier is built to match

    model = build_classifier("efficientnet_b0", num_experts=4, bn_eps=1e-3, padding="tf_same")
    model.eval()
    load_checkpoint_strict(model, torch.load(out, weights_only=True)["model"])
    with torch.no_grad():
        torch.testing.assert_close(model(images), source(images), rtol=1e-4, atol=1e-4)


def test_timm_efficientnet_cc_into_a_detector_backbone(tmp_path, capsys):
    # The config keeps the table's norm epsilon, 1e-3; timm's own weights were trained with 1e-5
    # (the tool's note says so). This timm model is built with 1e-3, so that the converted
    # backbone has to compute exactly what it computes.
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    source, path = _timm_source("efficientnet_cc_b0_4e", images, tmp_path, bn_eps=1e-3)
    opts = [
        "MODEL.BACKBONE.NAME",
        "build_condconv_mobilenet_backbone",
        "MODEL.MOBILENET.ARCH",
        "efficientnet_b0",
        "MODEL.CONDCONV.NUM_EXPERTS",
        "4",
        # A backbone that stops at res4: timm's res5 blocks and head conv are left out.
        "MODEL.MOBILENET.OUT_FEATURES",
        "['res4']",
        "MODEL.RPN.IN_FEATURES",
        "['res4']",
        "MODEL.ROI_HEADS.IN_FEATURES",
        "['res4']",
        "MODEL.ANCHOR_GENERATOR.SIZES",
        "[[32, 64]]",
    ]
    config = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    out = str(tmp_path / "cc4_detector.pth")
    tool = load_tool("convert_pretrained")
    args = ["--source", "timm-efficientnet", "--input", path, "--output", out]
    args += ["--timm-model", "efficientnet_cc_b0_4e", "--config-file", config]
    assert tool.main(args + opts) == 0
    printed = capsys.readouterr().out
    assert "MODEL.MOBILENET.BN_EPS 1e-05" in printed and "not used by the target" in printed

    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(opts)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(out)  # what MODEL.WEIGHTS does
    with torch.no_grad():
        want = source.blocks[:5](source.bn1(source.conv_stem(images)))  # stride 16, 112 channels
        torch.testing.assert_close(model.backbone(images)["res4"], want, rtol=1e-4, atol=1e-4)


def test_timm_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path):
    eight = timm.create_model("efficientnet_cc_b0_8e", pretrained=False)
    torch.save(eight.state_dict(), tmp_path / "cc8.pth")
    tool = load_tool("convert_pretrained")
    args = ["--source", "timm-efficientnet", "--input", str(tmp_path / "cc8.pth")]
    args += ["--output", str(tmp_path / "o.pth")]
    with pytest.raises(SystemExit, match="shape mismatches"):
        tool.main(args + ["--timm-model", "efficientnet_cc_b0_4e"])
    with pytest.raises(SystemExit, match="the checkpoint has 16 blocks, the target 23"):
        tool.main(args + ["--timm-model", "efficientnet_cc_b1_8e"])
    with pytest.raises(SystemExit, match="not a timm EfficientNet"):
        tool.main(args + ["--timm-model", "resnet50"])
    with pytest.raises(SystemExit):  # argparse: the source needs --timm-model
        tool.main(args)
    assert not (tmp_path / "o.pth").exists()

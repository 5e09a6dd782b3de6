"""tools/convert_pretrained.py: torchvision weights -> MODEL.WEIGHTS of a CondConv detector."""
import pytest
import torch
import torchvision
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from condconv_det import add_condconv_config
from tests.tools import load_tool

OPTS = [
    "MODEL.BACKBONE.NAME", "build_condconv_retinanet_resnet_fpn_backbone",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.RESNETS.NORM", "BN",
    "MODEL.CONDCONV.NUM_EXPERTS", "4",
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
    assert tool.main(["--source", "torchvision-resnet", "--input", str(tmp_path / "r18.pth"),
                      "--output", out, "--config-file", config] + OPTS) == 0
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
        tool.main(["--source", "torchvision-resnet", "--input", str(tmp_path / "nope.pth"),
                   "--output", str(tmp_path / "o.pth"), "--arch", "resnet18"])
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(SystemExit, match="shape mismatches"):
        tool.main(["--source", "torchvision-resnet", "--input", str(tmp_path / "r18.pth"),
                   "--output", str(tmp_path / "o.pth"), "--arch", "resnet50"])

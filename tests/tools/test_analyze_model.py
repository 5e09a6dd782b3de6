"""tools/analyze_model.py prints the per-layer table and totals for classifiers and configs."""

from detectron2 import model_zoo

from tests.tools import load_tool


def test_classifier_summary(capsys):
    assert load_tool("analyze_model").main(["--arch", "mobilenet_v2", "--experts", "4"]) == 0
    out = capsys.readouterr().out
    assert "backbone.res5" in out and "| fc " in out
    assert "mobilenet_v2 (experts 4) at 224x224:" in out and "in CondConv experts" in out


def test_detector_config_summary(capsys):
    config = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    argv = [
        "--config-file",
        config,
        "--size",
        "128x160",
        "MODEL.BACKBONE.NAME",
        "build_condconv_retinanet_mobilenet_fpn_backbone",
        "MODEL.MOBILENET.WIDTH_MULT",
        "0.5",
    ]
    assert load_tool("analyze_model").main(argv) == 0
    out = capsys.readouterr().out
    assert "backbone.bottom_up.res5" in out and "head.cls_score" in out
    madds = float(
        out.strip().splitlines()[-1].split("parameters")[1].split(",")[1].split("M multiply")[0]
    )
    assert madds > 0

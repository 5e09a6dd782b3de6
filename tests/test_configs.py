"""Every YAML under configs/ merges into a condconv_det config and builds its model on CPU."""

import pathlib

import pytest
import torch
from detectron2 import model_zoo
from detectron2.modeling import build_model

from condconv_det.config import get_cfg
from condconv_det.layers import CondConv2d, CondConvRouter

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))


def _load(path):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_there_are_configs():
    assert len(FILES) >= 4


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_builds_a_model(path):
    cfg = _load(path)
    model = build_model(cfg)
    condconvs = [m for m in model.modules() if isinstance(m, CondConv2d)]
    assert bool(condconvs) == (cfg.MODEL.CONDCONV.NUM_EXPERTS > 0)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 128, 160) * 255}])
    assert out["instances"].image_size == (128, 160)


@pytest.mark.parametrize(
    "path",
    [p for p in FILES if "COCO-Detection" in str(p) and "condconv" in p.name],
    ids=lambda p: p.name,
)
def test_coco_configs_carry_the_chosen_recipe(path):
    # The main job's recipe (docs/training.md): the paper's sigmoid routing without annealing,
    # DropExpert 0.1 in every router of the built model.
    cfg = _load(path)
    c = cfg.MODEL.CONDCONV
    assert (c.ROUTING_ACTIVATION, c.ROUTING_TEMPERATURE, c.TEMPERATURE_SCHEDULE.ITERS) == (
        "sigmoid",
        1.0,
        0,
    )
    routers = [m for m in build_model(cfg).modules() if isinstance(m, CondConvRouter)]
    assert routers and {r.expert_dropout for r in routers} == {0.1}
    # The paper's single-layer router: the hidden layer is the bundled main job's.
    assert {r.hidden_ratio for r in routers} == {0.0}


@pytest.mark.parametrize(
    "name, hidden_ratio, expert_dropout, experts",
    [
        ("shapes/ssd_condconv_MNv1.yaml", 0.25, 0.2, 7),
        ("digits/ssd_condconv_MNv1.yaml", 0.25, 0.2, 7),
        ("shapes_large/ssd_condconv_MNv1.yaml", 0.0, 0.0, 8),
    ],
)
def test_bundled_main_job_configs_carry_their_measured_routers(
    name, hidden_ratio, expert_dropout, experts
):
    # docs/training.md: the main job (and the digits, which inherit it) route 7 experts through a
    # hidden layer of a quarter of the input channels, with DropExpert 0.2; shapes_large keeps
    # what it was measured with.
    model = build_model(_load(CONFIGS / name))
    routers = [m for m in model.modules() if isinstance(m, CondConvRouter)]
    assert routers and {r.expert_dropout for r in routers} == {expert_dropout}
    assert {m.num_experts for m in model.modules() if isinstance(m, CondConv2d)} == {experts}
    for r in routers:
        if hidden_ratio:
            assert r.reduce.out_features == r.in_channels * hidden_ratio == r.fc.in_features
        else:
            assert r.reduce is None and r.fc.in_features == r.in_channels


@pytest.mark.parametrize("name", ["shapes", "digits"])
def test_main_job_costs_at_most_8_percent_more_multiply_adds_than_its_static_twin(name):
    # The budget the main job is held to (README): the kernel mix and the routers, counted per
    # image as the paper counts them, at the config's 128x128 test size.
    from condconv_det.analysis import analyze_detector

    madds = {
        twin: analyze_detector(_load(CONFIGS / name / f"ssd_{twin}_MNv1.yaml"))[1].total()
        for twin in ("condconv", "static")
    }
    assert 1.0 < madds["condconv"] / madds["static"] <= 1.08


@pytest.mark.parametrize("path", [p for p in FILES if "condconv" in p.name], ids=lambda p: p.name)
def test_static_twin_differs_only_in_experts(path):
    twin = path.with_name(path.name.replace("condconv", "static"))
    a, b = _load(path), _load(twin)
    assert a.MODEL.CONDCONV.NUM_EXPERTS > 0 and b.MODEL.CONDCONV.NUM_EXPERTS == 0
    b.defrost()
    # What only a CondConv model reads (the experts, routing, DropExpert, ...) may differ.
    b.MODEL.CONDCONV = a.MODEL.CONDCONV.clone()
    assert a.dump() == b.dump()


def test_model_zoo_base_changes_only_the_backbone():
    ours = _load(CONFIGS / "COCO-Detection/faster_rcnn_condconv_R_50_FPN_1x.yaml")
    zoo = _load(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    assert ours.MODEL.BACKBONE.NAME == "build_condconv_resnet_fpn_backbone"
    assert (
        ours.MODEL.WEIGHTS == zoo.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    )
    zoo.MODEL.BACKBONE.NAME = ours.MODEL.BACKBONE.NAME
    # The ImageNet R-50 fills the bottom-up only: FPN and heads start as initialised.
    assert ours.MODEL.WEIGHTS_MATCH == "pretrained"
    zoo.MODEL.WEIGHTS_MATCH = ours.MODEL.WEIGHTS_MATCH
    # ... and the CondConv recipe of the other COCO configs: DropExpert 0.1.
    assert ours.MODEL.CONDCONV.EXPERT_DROPOUT == 0.1
    zoo.MODEL.CONDCONV.EXPERT_DROPOUT = ours.MODEL.CONDCONV.EXPERT_DROPOUT
    assert ours.dump() == zoo.dump()


def test_static_faster_rcnn_is_detectron2s(tmp_path):
    from detectron2.config import get_cfg as d2_get_cfg

    ours = build_model(_load(CONFIGS / "COCO-Detection/faster_rcnn_static_R_50_FPN_1x.yaml"))
    zoo_cfg = d2_get_cfg()
    zoo_cfg.merge_from_file(
        model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    )
    zoo_cfg.MODEL.DEVICE = "cpu"
    zoo = build_model(zoo_cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in zoo.state_dict().items()
    }


def test_unknown_model_zoo_base_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text('_BASE_: "model_zoo://COCO-Detection/no_such_config.yaml"\n')
    with pytest.raises(FileNotFoundError, match="no_such_config.yaml.*model zoo"):
        get_cfg().merge_from_file(str(path))


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_every_config_is_plain_yaml(path):
    # detectron2 falls back to yaml.unsafe_load (and warns that the machine may be at risk)
    # when a config fails safe loading, e.g. on a !!python tag.
    import yaml

    yaml.safe_load(path.read_text())


def test_key_sources_follow_the_merge_order(tmp_path):
    from condconv_det.config import KeySource, config_key_sources

    (tmp_path / "a.yaml").write_text("MODEL:\n  SSD:\n    NUM_CLASSES: 3\n")
    (tmp_path / "b.yaml").write_text("MODEL:\n  SSD:\n    NUM_CLASSES: 4\nSEED: 1\n")
    top = tmp_path / "top.yaml"
    top.write_text('_BASE_: ["a.yaml", "b.yaml"]\nSEED: 2\nDATASETS:\n  TEST: ()\n')
    sources = config_key_sources(str(top), ["SEED", "3", "OUTPUT_DIR", "x"])
    assert sources["MODEL.SSD.NUM_CLASSES"] == KeySource(1, str(tmp_path / "b.yaml"))  # last base
    assert sources["DATASETS.TEST"] == KeySource(2, str(top))
    assert sources["SEED"] == sources["OUTPUT_DIR"] == KeySource(3, "the command line")
    assert "MODEL.META_ARCHITECTURE" not in sources  # a default
    shapes = config_key_sources(str(CONFIGS / "shapes" / "ssd_condconv_MNv1.yaml"))
    assert shapes["MODEL.SSD.NUM_CLASSES"] == KeySource(
        1, str(CONFIGS / "shapes" / "Base-SSD-shapes.yaml")
    )
    zoo = config_key_sources(
        str(CONFIGS / "COCO-Detection" / "faster_rcnn_condconv_R_50_FPN_1x.yaml")
    )
    assert zoo["MODEL.RPN.IN_FEATURES"].where.endswith("model_zoo/configs/Base-RCNN-FPN.yaml")
    assert "MODEL.ROI_HEADS.NUM_CLASSES" not in zoo

"""Every YAML under configs/ merges into a condconv_det config and builds its model on CPU."""
import pathlib

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from condconv_det import add_condconv_config
from condconv_det.layers import CondConv2d

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))


def _load(path):
    cfg = get_cfg()
    add_condconv_config(cfg)
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


@pytest.mark.parametrize("path", [p for p in FILES if "condconv" in p.name], ids=lambda p: p.name)
def test_static_twin_differs_only_in_experts(path):
    twin = path.with_name(path.name.replace("condconv", "static"))
    a, b = _load(path), _load(twin)
    assert a.MODEL.CONDCONV.NUM_EXPERTS > 0 and b.MODEL.CONDCONV.NUM_EXPERTS == 0
    b.defrost()
    b.MODEL.CONDCONV.NUM_EXPERTS = a.MODEL.CONDCONV.NUM_EXPERTS
    assert a.dump() == b.dump()

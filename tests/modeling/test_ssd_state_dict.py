"""The parameter and buffer names of SSD detectors are a checkpoint format: trained weights
(``MODEL.WEIGHTS``) and converted ImageNet weights load by these names, so a refactoring of the
backbone, the extra layers or the head must leave them, and their shapes, as they are."""

import os

import pytest
from detectron2.modeling import build_model

from condconv_det.config import get_cfg

KEYS_FILE = os.path.join(os.path.dirname(__file__), "data", "ssd_state_dict_keys.txt")

# Tiny detectors covering every kind of module whose names a checkpoint holds: static and
# CondConv stages, block and layer routing, plain and depthwise-separable extra layers and
# predictors, static and CondConv extra layers and predictors, a MobileNet head conv.
MODELS = {
    "ssd_tiny_v1": {
        "MODEL.MOBILENET.ARCH": "tiny_v1",
        "MODEL.MOBILENET.OUT_FEATURES": ["res4", "res5"],
        "MODEL.SSD.IN_FEATURES": ["res4", "res5"],
        "MODEL.SSD.EXTRA_CHANNELS": [16, 8],
        "MODEL.SSD.EXTRA_NUM_EXPERTS": 2,
        "MODEL.SSD.HEAD_NUM_EXPERTS": 2,
    },
    "ssdlite_tiny_v2": {
        "MODEL.MOBILENET.ARCH": "tiny_v2",
        "MODEL.MOBILENET.OUT_FEATURES": ["res4", "head"],
        "MODEL.SSD.IN_FEATURES": ["res4", "head"],
        "MODEL.SSD.EXTRA_CHANNELS": [16],
        "MODEL.SSD.EXTRA_DEPTHWISE": True,
        "MODEL.SSD.HEAD_DEPTHWISE": True,
        "MODEL.CONDCONV.ROUTING": "layer",
    },
}


def _state_dict_lines(name):
    cfg = get_cfg()
    cfg.merge_from_file(
        os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Base-SSD-CondConv.yaml")
    )
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MOBILENET.NORM = cfg.MODEL.SSD.NORM = "BN"
    cfg.MODEL.SSD.NUM_CLASSES = 3
    cfg.merge_from_list([item for key_value in MODELS[name].items() for item in key_value])
    model = build_model(cfg)
    return [
        f"{name} {key} {'x'.join(map(str, value.shape)) or 'scalar'}"
        for key, value in model.state_dict().items()
    ]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ssd_state_dict_keys_are_unchanged(name):
    with open(KEYS_FILE) as f:
        expected = [line.rstrip("\n") for line in f if line.startswith(name + " ")]
    assert expected, f"{KEYS_FILE} has no entry for {name}"
    assert _state_dict_lines(name) == expected

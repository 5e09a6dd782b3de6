"""tools/train_net.py end to end on CPU: COCO configs on a fake COCO, train -> eval-only, errors."""

import os
import re
import subprocess
import sys

import pytest

from ..engine.fake_coco import make_fake_coco

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.WEIGHTS",
    "",
    "MODEL.CONDCONV.NUM_EXPERTS",
    "2",
    "MODEL.MOBILENET.WIDTH_MULT",
    "0.25",
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "INPUT.SSD.SIZE",
    "96",
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.STEPS",
    "(1,)",
    "TEST.EVAL_PERIOD",
    "0",
]


def train_net(*args, env=None, check=True):
    """Runs tools/train_net.py in a fresh process; returns its combined output."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net.py {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def fake_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    make_fake_coco(root, num_train=4, num_val=2, size=(96, 128))
    return str(root)


COCO_CONFIGS = [
    "COCO-Detection/retinanet_condconv_MNv2_FPN_1x.yaml",
    "COCO-Detection/faster_rcnn_condconv_R_50_FPN_1x.yaml",
    "COCO-Detection/ssd300_condconv_MNv1.yaml",
]


@pytest.mark.parametrize("config", COCO_CONFIGS)
def test_coco_config_trains_and_evaluates_on_fake_coco(config, fake_coco, tmp_path):
    out = str(tmp_path / "out")
    proc = train_net(
        "--config-file",
        os.path.join(ROOT, "configs", config),
        *TINY,
        "OUTPUT_DIR",
        out,
        env={"DETECTRON2_DATASETS": fake_coco},
    )
    assert "Starting training from iteration 0" in proc.stdout
    assert re.search(r"copypaste: AP,AP50,AP75,APs,APm,APl", proc.stdout)
    assert "coco_2017_val" in proc.stdout
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_missing_coco_names_the_path_and_the_fix(tmp_path):
    proc = train_net(
        "--config-file",
        os.path.join(ROOT, "configs", COCO_CONFIGS[0]),
        *TINY,
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        env={"DETECTRON2_DATASETS": str(tmp_path / "nowhere")},
        check=False,
    )
    assert proc.returncode != 0
    assert "instances_train2017.json" in proc.stdout and "DETECTRON2_DATASETS" in proc.stdout


def test_missing_config_file_is_named(tmp_path):
    proc = train_net("--config-file", str(tmp_path / "nope.yaml"), check=False)
    assert proc.returncode != 0 and "nope.yaml" in proc.stdout and "does not exist" in proc.stdout


def test_eval_only_without_weights_says_what_to_add(fake_coco, tmp_path):
    proc = train_net(
        "--config-file",
        os.path.join(ROOT, "configs", COCO_CONFIGS[0]),
        "--eval-only",
        *TINY,
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        env={"DETECTRON2_DATASETS": fake_coco},
        check=False,
    )
    assert proc.returncode != 0 and "--eval-only needs the weights" in proc.stdout


def test_eval_only_resume_in_a_folder_without_checkpoints_is_an_error(fake_coco, tmp_path):
    proc = train_net(
        "--config-file",
        os.path.join(ROOT, "configs", COCO_CONFIGS[0]),
        "--eval-only",
        "--resume",
        *TINY,
        "OUTPUT_DIR",
        str(tmp_path / "empty"),
        env={"DETECTRON2_DATASETS": fake_coco},
        check=False,
    )
    assert proc.returncode != 0 and "holds no checkpoint" in proc.stdout
    assert "copypaste" not in proc.stdout  # no AP of random weights


def test_eval_only_with_a_foreign_checkpoint_names_it_and_evaluates_nothing(fake_coco, tmp_path):
    import torch

    foreign = tmp_path / "classifier.pth"
    torch.save({"model": {"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}}, foreign)
    proc = train_net(
        "--config-file",
        os.path.join(ROOT, "configs", COCO_CONFIGS[0]),
        "--eval-only",
        *TINY,
        "MODEL.WEIGHTS",
        str(foreign),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        env={"DETECTRON2_DATASETS": fake_coco},
        check=False,
    )
    assert proc.returncode != 0 and "copypaste" not in proc.stdout
    assert str(foreign) in proc.stdout and "does not fit the model" in proc.stdout
    assert "unexpected keys (2)" in proc.stdout and "fc.weight" in proc.stdout

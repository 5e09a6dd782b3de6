"""A COCO-format dataset of one's own, given by its files, through the tools with no Python:
tools/train_net.py (paths on the command line, or in a YAML file), tools/lazy_train_net.py
(train.coco_json) and tools/demo.py train, evaluate and draw with the data's classes; bad files
and settings fail before anything trains, naming the setting."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from condconv_det import visualization

from ..engine.fake_coco import make_fake_coco
from . import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "shapes", "ssd_condconv_MNv1.yaml")
# Non-contiguous ids, names that no bundled dataset has.
CATEGORIES = [{"id": 1, "name": "apple"}, {"id": 2, "name": "kiwi"}, {"id": 7, "name": "plum"}]
CLASSES = [c["name"] for c in CATEGORIES]
# fmt: off
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.CONDCONV.NUM_EXPERTS", "2",
    "MODEL.MOBILENET.WIDTH_MULT", "0.25",
    "INPUT.SSD.SIZE", "64",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.WARMUP_ITERS", "1",
]
# fmt: on


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``{"train", "train_images", "test", "test_images"}``: a 4 + 2 image dataset of 3 classes,
    one JSON and one image folder per split."""
    root = tmp_path_factory.mktemp("own")
    jsons = make_fake_coco(root, num_train=4, num_val=2, size=(96, 128), categories=CATEGORIES)
    images = os.path.join(root, "coco")
    return {
        "train": jsons["train2017"],
        "train_images": os.path.join(images, "train2017"),
        "test": jsons["val2017"],
        "test_images": os.path.join(images, "val2017"),
    }


def paths(data, *splits):
    """The command-line overrides that give ``splits`` ("train", "test")."""
    opts = []
    for split in splits:
        key = f"DATASETS.COCO_JSON.{split.upper()}"
        opts += [key, data[split], f"{key}_IMAGES", data[f"{split}_images"]]
    return opts


def train_net_main(*argv):
    train_net = load_tool("train_net")
    return train_net.main(train_net.argument_parser().parse_args(list(argv)))


def assert_three_class_ssd(output_dir):
    """The run's saved config and weights are those of a 3-class SSD (4 boxes per location)."""
    with open(os.path.join(output_dir, "config.yaml")) as f:
        assert yaml.safe_load(f)["MODEL"]["SSD"]["NUM_CLASSES"] == 3
    weights = torch.load(
        os.path.join(output_dir, "model_final.pth"), map_location="cpu", weights_only=False
    )
    assert weights["model"]["head.cls_score.0.weight"].shape[0] == 4 * (3 + 1)  # + background


def test_train_net_with_paths_on_the_command_line(data, tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", CONFIG]
        + paths(data, "train", "test")
        + TINY
        + ["OUTPUT_DIR", out],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "MODEL.SSD.NUM_CLASSES: 3, the categories of" in proc.stdout
    table = proc.stdout[proc.stdout.index("Per-category bbox AP") :]
    assert all(f"| {name} " in table for name in CLASSES), table[:600]
    assert "circle" not in table and "person" not in table
    assert_three_class_ssd(out)

    # The saved config names the same splits (stable names): evaluation needs nothing more.
    results = train_net_main(
        "--config-file",
        os.path.join(out, "config.yaml"),
        "--eval-only",
        "MODEL.WEIGHTS",
        os.path.join(out, "model_final.pth"),
    )
    assert {f"AP-{name}" for name in CLASSES} <= set(results["bbox"])

    # The routing analysis reads the same config (in a fresh process, where only the config can
    # register the data): the data's images, by the data's classes.
    routing = tmp_path / "routing"
    weights = os.path.join(out, "model_final.pth")
    tool = os.path.join(ROOT, "tools", "analyze_routing.py")
    argv = ["--config-file", os.path.join(out, "config.yaml"), "--output", str(routing)]
    proc = subprocess.run(
        [sys.executable, tool, *argv, "MODEL.WEIGHTS", weights],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (routing / "routing.csv").read_text().splitlines()[1:]
    assert {line.split(",")[2] for line in rows} == set(CLASSES)


def test_train_net_with_paths_in_a_yaml_config(data, tmp_path):
    config = tmp_path / "own.yaml"
    config.write_text(
        yaml.safe_dump(
            {"_BASE_": CONFIG, "DATASETS": {"COCO_JSON": {k.upper(): v for k, v in data.items()}}}
        )
    )
    out = str(tmp_path / "out")
    results = train_net_main("--config-file", str(config), *TINY, "OUTPUT_DIR", out)
    assert {f"AP-{name}" for name in CLASSES} <= set(results["bbox"])  # per-class AP, our names
    assert_three_class_ssd(out)


def test_lazy_train_net_with_train_coco_json(data, tmp_path):
    tool = load_tool("lazy_train_net")
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG.replace(".yaml", ".py")]
    argv += [f"train.coco_json.{key}={value}" for key, value in data.items()]
    argv += ["train.max_iter=2", "train.device=cpu", f"train.output_dir={out}"]
    argv += [
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
    ]
    argv += ["model.backbone.bottom_up.num_experts=2"]
    results = tool.main(tool.argument_parser().parse_args(argv))
    assert {f"AP-{name}" for name in CLASSES} <= set(results["bbox"])
    weights = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert weights["head.cls_score.0.weight"].shape[0] == 4 * (3 + 1)


@pytest.mark.parametrize("splits", [("train", "test"), ("train",)])
def test_demo_draws_the_datas_class_names(data, tmp_path, monkeypatch, splits):
    pytest.importorskip("cv2", reason="detectron2's Visualizer needs OpenCV")
    demo = load_tool("demo")
    drawn = []
    draw = visualization.draw_instances

    def recording_draw(image, instances, metadata):
        drawn.append(
            (
                list(metadata.thing_classes),
                [metadata.thing_classes[c] for c in instances.pred_classes.tolist()],
            )
        )
        return draw(image, instances, metadata)

    monkeypatch.setattr(visualization, "draw_instances", recording_draw)
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((80, 100, 3), 128, dtype=np.uint8)).save(image)
    argv = ["--config-file", CONFIG, "--input", str(image), "--output", str(tmp_path / "out")]
    argv += ["--confidence-threshold", "0.0", *paths(data, *splits), *TINY, "MODEL.WEIGHTS", ""]
    assert demo.main(argv) == 0
    # The data's names, in its order; a random model at threshold 0 draws boxes, each labelled
    # with one of them (which classes win its top scores depends on the random weights).
    (names, labels), *_ = drawn
    assert names == CLASSES
    assert labels and set(labels) <= set(CLASSES)


# ---------------------------------------------------------------------------------------------
# Errors: raised while the config is set up, before the output folder or a model exists


def _break(data, tmp_path, case):
    """A copy of ``data`` broken as ``case`` says."""
    broken = dict(data)
    if case == "missing json":
        broken["train"] = str(tmp_path / "nope.json")
    elif case == "missing image folder":
        broken["test_images"] = str(tmp_path / "nope")
    elif case in ("empty json", "invalid json", "json without images", "json without categories"):
        content = {
            "empty json": "",
            "invalid json": '{"images": [',
            "json without images": (
                '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}'
            ),
            "json without categories": (
                '{"images": [{"id": 1, "file_name": "a.jpg", "height": 9, "width": 9}]}'
            ),
        }[case]
        broken["train"] = str(tmp_path / "broken.json")
        (tmp_path / "broken.json").write_text(content)
    elif case == "missing image files":
        broken["train_images"] = data["test_images"]  # the other split's folder
    elif case == "mismatched splits":
        make_fake_coco(
            tmp_path,
            num_train=1,
            num_val=0,
            categories=CATEGORIES[:2] + [{"id": 7, "name": "pear"}],
        )
        broken["test"] = str(tmp_path / "coco" / "annotations" / "instances_train2017.json")
        broken["test_images"] = str(tmp_path / "coco" / "train2017")
    return broken


ERRORS = [
    ("missing json", r"DATASETS.COCO_JSON.TRAIN '.*nope.json' does not exist"),
    ("missing image folder", r"DATASETS.COCO_JSON.TEST_IMAGES '.*nope' does not exist"),
    ("empty json", r"DATASETS.COCO_JSON.TRAIN .*broken.json is empty \(0 bytes\)"),
    ("invalid json", r"DATASETS.COCO_JSON.TRAIN .*broken.json is not valid JSON"),
    ("json without images", r"DATASETS.COCO_JSON.TRAIN .*broken.json lists no images"),
    ("json without categories", r"DATASETS.COCO_JSON.TRAIN .*broken.json has no 'categories'"),
    (
        "missing image files",
        r"4 of the 4 images of DATASETS.COCO_JSON.TRAIN .* are missing under .*val2017",
    ),
    (
        "mismatched splits",
        r"only in DATASETS.COCO_JSON.TRAIN .*\{7: 'plum'\}; "
        r"only in DATASETS.COCO_JSON.TEST .*\{7: 'pear'\}",
    ),
]


@pytest.mark.parametrize("case, message", ERRORS, ids=[case for case, _ in ERRORS])
def test_bad_data_fails_before_training_naming_the_setting(data, tmp_path, case, message):
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train_net_main(
            "--config-file",
            CONFIG,
            *paths(_break(data, tmp_path, case), "train", "test"),
            *TINY,
            "OUTPUT_DIR",
            str(out),
        )
    assert not out.exists()  # nothing started


def test_conflicting_settings_fail_before_training(data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"DATASETS.TRAIN \('shapes_train',\) \(the command line\) and"
    ):
        train_net_main(
            "--config-file",
            CONFIG,
            *paths(data, "train", "test"),
            "DATASETS.TRAIN",
            "('shapes_train',)",
            "OUTPUT_DIR",
            str(out),
        )
    with pytest.raises(
        ValueError, match=r"MODEL.SSD.NUM_CLASSES is 5 \(the command line\) but .* has 3 categories"
    ):
        train_net_main(
            "--config-file",
            CONFIG,
            *paths(data, "train", "test"),
            "MODEL.SSD.NUM_CLASSES",
            "5",
            "OUTPUT_DIR",
            str(out),
        )
    with pytest.raises(
        ValueError, match="DATASETS.COCO_JSON.TRAIN is given but not DATASETS.COCO_JSON.TEST"
    ):
        train_net_main("--config-file", CONFIG, *paths(data, "train"), "OUTPUT_DIR", str(out))
    lazy = load_tool("lazy_train_net")
    argv = ["--config-file", CONFIG.replace(".yaml", ".py"), f"train.output_dir={out}"]
    argv += [f"train.coco_json.{key}={value}" for key, value in data.items() if key != "train"]
    argv += [f"train.coco_json.train={tmp_path / 'nope.json'}"]
    with pytest.raises(
        FileNotFoundError, match=r"train.coco_json.train '.*nope.json' does not exist"
    ):
        lazy.main(lazy.argument_parser().parse_args(argv))
    assert not out.exists()

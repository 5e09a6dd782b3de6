"""DATASETS.COCO_JSON (YAML) and train.coco_json (LazyConfig): the splits replace the config's
datasets, the class count follows the data unless set with the paths, conflicts are errors."""

import pathlib

import pytest
from detectron2.config import LazyConfig
from detectron2.data import MetadataCatalog

from condconv_det.config import config_key_sources, get_cfg
from condconv_det.engine.coco_json_config import apply_coco_json_config, apply_coco_json_lazy

from ..data.test_datasets import _write_coco

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
SHAPES = str(CONFIGS / "shapes" / "ssd_condconv_MNv1.yaml")


@pytest.fixture
def data(tmp_path):
    """Train and test splits of the classes cat (id 3) and dog (id 7)."""
    paths = {}
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        json_file, images = _write_coco(tmp_path / split)
        paths[split], paths[f"{split}_images"] = str(json_file), str(images)
    return paths


def cli(data, *splits):
    """The command-line overrides that give ``splits``."""
    opts = []
    for split in splits:
        opts += [f"DATASETS.COCO_JSON.{split.upper()}", data[split]]
        opts += [f"DATASETS.COCO_JSON.{split.upper()}_IMAGES", data[f"{split}_images"]]
    return opts


def apply(config_file, opts, needs=("train", "test")):
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    return cfg, apply_coco_json_config(cfg, config_key_sources(config_file, opts), needs)


def write_yaml(path, text: str) -> str:
    path.write_text(f'_BASE_: "{SHAPES}"\n' + text)
    return str(path)


def paths_yaml(data, *splits) -> str:
    lines = "".join(
        f"    {split.upper()}: {data[split]}\n"
        f"    {split.upper()}_IMAGES: {data[split + '_images']}\n"
        for split in splits
    )
    return f"DATASETS:\n  COCO_JSON:\n{lines}"


def test_without_paths_nothing_changes():
    cfg, result = apply(SHAPES, [])
    assert result is None
    assert cfg.DATASETS.TRAIN == ("shapes_plain_train",) and cfg.MODEL.SSD.NUM_CLASSES == 5


def test_paths_replace_the_config_datasets_and_class_count(data):
    cfg, result = apply(SHAPES, cli(data, "train", "test"))
    train, test = result.splits["train"], result.splits["test"]
    assert cfg.DATASETS.TRAIN == (train.name,) and cfg.DATASETS.TEST == (test.name,)
    assert cfg.MODEL.SSD.NUM_CLASSES == result.num_classes == 2
    assert MetadataCatalog.get(test.name).thing_classes == result.thing_classes == ["cat", "dog"]
    assert len(result.changes) == 3  # both names and the class count, each logged
    assert "MODEL.SSD.NUM_CLASSES: 2" in result.changes[2] and "cat, dog" in result.changes[2]
    assert "the config said 5" in result.changes[2]


@pytest.mark.parametrize(
    "config, key",
    [
        ("COCO-Detection/retinanet_condconv_MNv2_FPN_1x.yaml", "RETINANET"),
        ("COCO-Detection/faster_rcnn_condconv_R_50_FPN_1x.yaml", "ROI_HEADS"),
    ],
)
def test_the_meta_architectures_class_count_is_set(data, config, key):
    cfg, _ = apply(str(CONFIGS / config), cli(data, "train", "test"))
    assert cfg.MODEL[key].NUM_CLASSES == 2


def test_a_dataset_name_given_with_the_paths_is_a_conflict(data):
    with pytest.raises(ValueError) as info:
        apply(SHAPES, cli(data, "train", "test") + ["DATASETS.TRAIN", "('shapes_train',)"])
    text = str(info.value)
    assert (
        "DATASETS.TRAIN ('shapes_train',) (the command line) and DATASETS.COCO_JSON.TRAIN" in text
    )
    assert "remove DATASETS.TRAIN, or remove DATASETS.COCO_JSON.TRAIN and" in text
    _, result = apply(SHAPES, cli(data, "train", "test"))
    same = cli(data, "train", "test") + ["DATASETS.TRAIN", f"('{result.splits['train'].name}',)"]
    apply(SHAPES, same)  # naming the registered split itself is no conflict


def test_a_class_count_given_with_the_paths_is_checked(data, tmp_path):
    with pytest.raises(ValueError) as info:
        apply(SHAPES, cli(data, "train", "test") + ["MODEL.SSD.NUM_CLASSES", "3"])
    text = str(info.value)
    assert "MODEL.SSD.NUM_CLASSES is 3 (the command line) but DATASETS.COCO_JSON.TRAIN" in text
    assert "has 2 categories (cat, dog). Remove MODEL.SSD.NUM_CLASSES" in text
    cfg, result = apply(SHAPES, cli(data, "train", "test") + ["MODEL.SSD.NUM_CLASSES", "2"])
    assert cfg.MODEL.SSD.NUM_CLASSES == 2 and not any("NUM_CLASSES" in c for c in result.changes)

    # In the file with the paths: checked; in a file the paths override: replaced.
    own = write_yaml(
        tmp_path / "own.yaml",
        paths_yaml(data, "train", "test") + "MODEL:\n  SSD:\n    NUM_CLASSES: 4\n",
    )
    with pytest.raises(
        ValueError, match=f"NUM_CLASSES is 4 \\({own}\\) but DATASETS.COCO_JSON.TRAIN"
    ):
        apply(own, [])
    base = write_yaml(tmp_path / "base.yaml", "MODEL:\n  SSD:\n    NUM_CLASSES: 4\n")
    own = tmp_path / "own2.yaml"
    own.write_text('_BASE_: "base.yaml"\n' + paths_yaml(data, "train", "test"))
    assert apply(str(own), [])[0].MODEL.SSD.NUM_CLASSES == 2
    assert apply(base, cli(data, "train", "test"))[0].MODEL.SSD.NUM_CLASSES == 2


def test_a_dataset_name_in_the_file_with_the_paths_is_a_conflict(data, tmp_path):
    own = write_yaml(
        tmp_path / "own.yaml", paths_yaml(data, "train", "test") + "  TRAIN: ('digits_train',)\n"
    )
    with pytest.raises(ValueError, match=f"DATASETS.TRAIN \\('digits_train',\\) \\({own}\\) and"):
        apply(own, [])
    digits = str(CONFIGS / "digits" / "ssd_condconv_MNv1.yaml")  # sets DATASETS and NUM_CLASSES
    cfg, _ = apply(digits, cli(data, "train", "test"))  # the command line overrides the file
    assert cfg.MODEL.SSD.NUM_CLASSES == 2 and cfg.DATASETS.TRAIN != ("digits_train",)


def test_one_split_given_with_the_others_from_the_config_is_an_error(data):
    with pytest.raises(ValueError) as info:
        apply(SHAPES, cli(data, "train"))
    text = str(info.value)
    assert "DATASETS.COCO_JSON.TRAIN is given but not DATASETS.COCO_JSON.TEST" in text
    assert "DATASETS.TEST ('shapes_plain_val',) from" in text and "not your dataset" in text
    assert 'DATASETS.TEST "()" for none' in text
    cfg, _ = apply(SHAPES, cli(data, "train") + ["DATASETS.TEST", "()"])  # no evaluation: fine
    assert cfg.DATASETS.TEST == ()
    cfg, result = apply(SHAPES, cli(data, "test"), needs=("test",))  # --eval-only: fine
    assert cfg.DATASETS.TEST == (result.splits["test"].name,) and cfg.MODEL.SSD.NUM_CLASSES == 2
    cfg, result = apply(SHAPES, cli(data, "train"), needs=())  # the demo: classes only
    assert result.thing_classes == ["cat", "dog"]


@pytest.mark.parametrize("given", ["TRAIN", "TRAIN_IMAGES"])
def test_a_json_and_its_images_come_together(data, given):
    value = data["train"] if given == "TRAIN" else data["train_images"]
    missing = "TRAIN_IMAGES" if given == "TRAIN" else "TRAIN"
    with pytest.raises(
        ValueError, match=f"COCO_JSON.{given} is .* but DATASETS.COCO_JSON.{missing} is not given"
    ):
        apply(SHAPES, [f"DATASETS.COCO_JSON.{given}", value])


def test_splits_with_other_categories_fail_before_anything_is_built(data, tmp_path):
    (tmp_path / "other").mkdir()
    other, images = _write_coco(
        tmp_path / "other", lambda c: c["categories"][0].update(name="lion")
    )
    opts = cli(data, "train") + [
        "DATASETS.COCO_JSON.TEST",
        str(other),
        "DATASETS.COCO_JSON.TEST_IMAGES",
        str(images),
    ]
    with pytest.raises(
        ValueError, match=r"only in DATASETS.COCO_JSON.TRAIN .*\{3: 'cat'\}.*TEST .*\{3: 'lion'\}"
    ):
        apply(SHAPES, opts)


# ---------------------------------------------------------------------------------------------
# LazyConfig


def lazy(config: str, overrides):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIGS / config)), overrides)
    return cfg, apply_coco_json_lazy(cfg, overrides)


def lazy_paths(data):
    return [
        f"train.coco_json.{key}={data[key]}"
        for key in ("train", "train_images", "test", "test_images")
    ]


def test_lazy_paths_replace_the_names_the_evaluator_and_the_class_count(data):
    cfg, result = lazy("shapes/ssd_condconv_MNv1.py", lazy_paths(data))
    assert cfg.dataloader.train.dataset.names == result.splits["train"].name
    assert cfg.dataloader.test.dataset.names == result.splits["test"].name
    assert cfg.dataloader.evaluator.dataset_name == result.splits["test"].name
    assert cfg.model.num_classes == 2 and cfg.model.head.num_classes == 2
    cfg, _ = lazy("COCO-Detection/faster_rcnn_condconv_R_50_FPN_1x.py", lazy_paths(data))
    assert cfg.model.roi_heads.num_classes == 2
    assert cfg.model.roi_heads.box_predictor.num_classes == 2
    assert lazy("shapes/ssd_condconv_MNv1.py", [])[1] is None


def test_lazy_settings_on_the_command_line_are_checked(data):
    with pytest.raises(
        ValueError, match="dataloader.train.dataset.names 'shapes_train' .* both say"
    ):
        lazy(
            "shapes/ssd_condconv_MNv1.py",
            lazy_paths(data) + ["dataloader.train.dataset.names=shapes_train"],
        )
    with pytest.raises(ValueError, match=r"model.num_classes is 5 \(the command line\) but"):
        lazy("shapes/ssd_condconv_MNv1.py", lazy_paths(data) + ["model.num_classes=5"])
    with pytest.raises(
        ValueError,
        match="train.coco_json takes train, train_images, test, test_images; unknown: trian",
    ):
        lazy("shapes/ssd_condconv_MNv1.py", [f"train.coco_json.trian={data['train']}"])


def test_lazy_paths_in_the_config_file_replace_its_names_and_class_count(data):
    cfg = LazyConfig.load(str(CONFIGS / "shapes" / "ssd_condconv_MNv1.py"))
    cfg.train.coco_json = {
        key: data[key] for key in ("train", "train_images", "test", "test_images")
    }
    result = apply_coco_json_lazy(cfg, [])  # as a .py file setting train.coco_json does
    assert cfg.dataloader.train.dataset.names == result.splits["train"].name
    assert cfg.model.num_classes == 2
    cfg = LazyConfig.apply_overrides(cfg, ["model.num_classes=5"])
    with pytest.raises(ValueError, match=r"model.num_classes is 5 \(the command line\)"):
        apply_coco_json_lazy(cfg, ["model.num_classes=5"])

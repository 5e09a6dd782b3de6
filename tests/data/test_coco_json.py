"""COCO-format splits given by their files: checked completely when registered, named by their
files, class names in the metadata at once; splits with other categories refused."""

import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from condconv_det.data.coco_json import (
    check_same_categories,
    coco_json_dataset_name,
    register_coco_json,
)

from .test_datasets import _write_coco

KEYS = dict(json_key="DATASETS.COCO_JSON.TRAIN", images_key="DATASETS.COCO_JSON.TRAIN_IMAGES")


def test_registers_under_a_stable_name_with_the_class_names_at_once(tmp_path, monkeypatch):
    json_file, image_root = _write_coco(tmp_path)
    monkeypatch.chdir(tmp_path)
    split = register_coco_json("instances.json", "images")  # relative: resolved now
    assert split.name == coco_json_dataset_name(json_file, image_root)
    assert split.name.startswith("instances_") and len(split.name) == len("instances_") + 8
    assert (split.json_file, split.image_root) == (str(json_file), str(image_root))
    assert split.categories == {3: "cat", 7: "dog"} and split.thing_classes == ["cat", "dog"]
    metadata = MetadataCatalog.get(split.name)
    assert metadata.thing_classes == ["cat", "dog"]  # before any load: the demo reads them
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert (metadata.json_file, metadata.evaluator_type) == (str(json_file), "coco")
    # Loading sets detectron2's own values, which must equal ours (it refuses to change them).
    records = DatasetCatalog.get(split.name)
    assert [a["category_id"] for r in records for a in r["annotations"]] == [0, 1]
    assert register_coco_json(json_file, image_root).name == split.name  # again: replaced
    other = coco_json_dataset_name(json_file, tmp_path / "other_images")
    assert other != split.name  # the same JSON with other images is another dataset


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("no_json", FileNotFoundError, r"DATASETS.COCO_JSON.TRAIN '.*nope.json' does not exist"),
        ("json_is_a_folder", FileNotFoundError, r"COCO_JSON.TRAIN '.*images' is a folder"),
        ("no_images", FileNotFoundError, r"TRAIN_IMAGES '.*no_images' does not exist.*folder"),
        ("empty", ValueError, r"COCO_JSON.TRAIN .*instances.json is empty \(0 bytes\)"),
        ("invalid", ValueError, r"COCO_JSON.TRAIN .*instances.json is not valid JSON"),
        ("a_list", ValueError, r"holds a list, not a COCO JSON object"),
        ("no_image_entries", ValueError, r"COCO_JSON.TRAIN .*instances.json lists no images"),
        ("no_categories", ValueError, r"COCO_JSON.TRAIN .*instances.json has no 'categories'"),
        ("unnamed_category", ValueError, r"category \{'id': 3\} has no 'name'"),
        ("missing_image", FileNotFoundError, r"1 of the 2 images .*2\.png.*TRAIN_IMAGES"),
    ],
)
def test_bad_files_name_the_setting_and_the_fix(tmp_path, case, error, message):
    mutate = {
        "no_image_entries": lambda c: c.update(images=[], annotations=[]),
        "no_categories": lambda c: c.update(categories=[]),
        "unnamed_category": lambda c: c["categories"][0].pop("name"),
    }.get(case)
    json_file, image_root = _write_coco(tmp_path, mutate)
    if case == "no_json":
        json_file = tmp_path / "nope.json"
    elif case == "json_is_a_folder":
        json_file = image_root
    elif case == "no_images":
        image_root = tmp_path / "no_images"
    elif case == "empty":
        json_file.write_text("")
    elif case == "invalid":
        json_file.write_text(json_file.read_text()[:40])
    elif case == "a_list":
        json_file.write_text("[]")
    elif case == "missing_image":
        os.remove(image_root / "2.png")
    name = coco_json_dataset_name(json_file, image_root)
    with pytest.raises(error, match=message):
        register_coco_json(json_file, image_root, **KEYS)
    assert name not in DatasetCatalog.list()  # nothing half registered


def test_splits_with_other_categories_name_both_files_and_the_difference(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train = register_coco_json(*_write_coco(tmp_path / "a"))
    test = register_coco_json(
        *_write_coco(tmp_path / "b", lambda c: c["categories"][1].update(name="wolf"))
    )
    check_same_categories(train, train)
    with pytest.raises(ValueError) as info:
        check_same_categories(train, test, "DATASETS.COCO_JSON.TRAIN", "DATASETS.COCO_JSON.TEST")
    text = str(info.value)
    assert f"only in DATASETS.COCO_JSON.TRAIN {train.json_file}: {{7: 'dog'}}" in text
    assert f"only in DATASETS.COCO_JSON.TEST {test.json_file}: {{7: 'wolf'}}" in text
    assert "same ids and names" in text


def test_the_name_depends_on_the_absolute_paths_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = coco_json_dataset_name("a/x.json", "a/img")
    assert relative == coco_json_dataset_name(
        tmp_path / "a" / "x.json", str(tmp_path / "a" / "img")
    )
    assert relative.startswith("x_")

"""Dataset registration: shapes_train / shapes_val load (and generate) through detectron2's catalog
and evaluate to AP 100 on their own ground truth; bad COCO input fails early and clearly."""

import importlib
import json
import logging
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

import condconv_det  # noqa: F401  (registers the datasets)
from condconv_det.data import datasets
from condconv_det.data.datasets import (
    SHAPES_DATASETS,
    default_shapes_root,
    load_coco_json_checked,
    register_coco_checked,
    register_shapes,
)
from condconv_det.data.shapes import SHAPES_CLASSES

TINY = dict(num_train=6, num_val=3, image_size=(128, 160), progress=False)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets") / "condconv_shapes"


@pytest.fixture
def shapes_root(shapes_dir):
    """shapes_train / shapes_val registered on a tiny dataset; the default registration after."""
    register_shapes(shapes_dir, **TINY)
    yield shapes_dir
    register_shapes()


def test_default_registration(monkeypatch, tmp_path):
    assert set(SHAPES_DATASETS) <= set(DatasetCatalog.list())
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert default_shapes_root() == str(tmp_path / "condconv_shapes")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert default_shapes_root() == "datasets/condconv_shapes"


def test_registration_is_idempotent(shapes_root):
    register_shapes(shapes_root, **TINY)
    register_shapes(shapes_root, **TINY)
    importlib.reload(datasets)  # what a second import would do at worst
    register_shapes(shapes_root, **TINY)  # the reload registered the default root
    with pytest.raises(TypeError):
        register_shapes(shapes_root, num_trian=6)  # misspelt: fails now, not at first load


def test_registration_generates_nothing(tmp_path):
    try:
        register_shapes(tmp_path / "condconv_shapes", **TINY)
        assert list(tmp_path.iterdir()) == []
    finally:
        register_shapes()


def test_shapes_load_through_the_catalog(shapes_root):
    train = DatasetCatalog.get("shapes_train")  # generates the dataset
    assert (shapes_root / "shapes_dataset.json").is_file()
    val = DatasetCatalog.get("shapes_val")
    assert (len(train), len(val)) == (6, 3)
    for record in train + val:
        assert (record["height"], record["width"]) == (128, 160)
        assert np.asarray(Image.open(record["file_name"])).shape == (128, 160, 3)
        assert record["annotations"]
        for annotation in record["annotations"]:
            assert annotation["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= annotation["category_id"] < len(SHAPES_CLASSES)
    metadata = MetadataCatalog.get("shapes_val")
    assert metadata.thing_classes == list(SHAPES_CLASSES)
    assert metadata.evaluator_type == "coco"
    assert metadata.json_file == str(shapes_root / "annotations" / "instances_val.json")


def test_perfect_predictions_score_ap_100(shapes_root):
    """The ground truth, as predictions with score 1, through detectron2's COCOEvaluator."""
    evaluator = COCOEvaluator(
        "shapes_val", tasks=("bbox", "segm"), distributed=False, use_fast_impl=False
    )
    evaluator.reset()
    for record in DatasetCatalog.get("shapes_val"):
        annotations = record["annotations"]
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        masks = [mask_util.decode(a["segmentation"]) for a in annotations]
        instances.pred_masks = torch.from_numpy(np.stack(masks)).bool()
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75"):
            assert results[task][metric] == pytest.approx(100.0), (task, metric)
        per_class = [results[task][f"AP-{name}"] for name in SHAPES_CLASSES]
        assert all(math.isnan(ap) or ap == pytest.approx(100.0) for ap in per_class)


# --- COCO-format input checking -------------------------------------------------------------


def _write_coco(tmp_path, mutate=None, *, grayscale=False):
    """Two 40 x 60 images with a box each, after ``mutate(coco)``; returns (json, image root)."""
    images_dir = tmp_path / "images"
    images_dir.mkdir(exist_ok=True)
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 60} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 60, 40], "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    for image in coco["images"]:
        mode, shape = ("L", (40, 60)) if grayscale else ("RGB", (40, 60, 3))
        Image.fromarray(np.full(shape, 100, np.uint8), mode).save(images_dir / image["file_name"])
    if mutate is not None:
        mutate(coco)
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(coco))
    return json_file, images_dir


def test_register_coco_checked_loads_and_is_idempotent(tmp_path):
    json_file, image_root = _write_coco(tmp_path)
    try:
        for _ in range(2):
            register_coco_checked("condconv_test_coco", {"note": "x"}, json_file, image_root)
        records = DatasetCatalog.get("condconv_test_coco")
        assert [a["category_id"] for r in records for a in r["annotations"]] == [0, 1]
        metadata = MetadataCatalog.get("condconv_test_coco")
        assert metadata.thing_classes == ["cat", "dog"]
        assert (metadata.evaluator_type, metadata.note) == ("coco", "x")
        assert metadata.json_file == str(json_file)
    finally:
        DatasetCatalog.remove("condconv_test_coco")
        MetadataCatalog.remove("condconv_test_coco")


def test_grayscale_images_are_fine(tmp_path):
    json_file, image_root = _write_coco(tmp_path, grayscale=True)
    records = load_coco_json_checked(json_file, image_root)
    assert read_image(records[0]["file_name"], format="RGB").shape == (40, 60, 3)


def test_missing_paths_name_the_path_and_detectron2_datasets(tmp_path):
    json_file, image_root = _write_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.json.*DETECTRON2_DATASETS.*shapes_train"):
        load_coco_json_checked(tmp_path / "nope.json", image_root)
    with pytest.raises(FileNotFoundError, match=r"image folder .*no_images.*DETECTRON2_DATASETS"):
        load_coco_json_checked(json_file, tmp_path / "no_images")
    (image_root / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 images .*missing.*2\.png"):
        load_coco_json_checked(json_file, image_root)


def _set_bbox(bbox):
    def mutate(coco):
        coco["annotations"][0]["bbox"] = bbox

    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(images=[], annotations=[]), "lists no images"),
        (lambda c: c.update(categories=[]), "no 'categories'"),
        (_set_bbox([5, 5, -3, 10]), r"negative width or height.*\[x0, y0, x1, y1\]"),
        (_set_bbox([5, 5, float("nan"), 10]), "4 finite numbers"),
        (_set_bbox([5, 5, 10]), "4 finite numbers"),
        (_set_bbox([5, 5, 100, 10]), r"outside its 60 x 40 .*image"),
        (_set_bbox([-20, 5, 10, 10]), "outside its"),
        (lambda c: c["annotations"][0].update(category_id=99), r"category_id 99.*\[3, 7\]"),
        (lambda c: c["annotations"][0].pop("bbox"), r"bbox None"),
        (lambda c: c["annotations"][1].update(id=1), "duplicate annotation ids"),
        (lambda c: c["images"][1].update(id=1), "image id 1 appears twice"),
        (lambda c: c["images"][0].update(height=0), "must be positive"),
        (lambda c: c["annotations"][0].update(ignore=1), "'ignore'"),
    ],
)
def test_bad_input_raises_a_clear_error(tmp_path, mutate, message):
    json_file, image_root = _write_coco(tmp_path, mutate)
    with pytest.raises(ValueError, match=message) as info:
        load_coco_json_checked(json_file, image_root)
    assert str(json_file) in str(info.value)  # says which file


def test_bad_input_fails_at_load_through_the_catalog(tmp_path):
    json_file, image_root = _write_coco(
        tmp_path, lambda c: c["annotations"][0].update(category_id=9)
    )
    try:
        register_coco_checked("condconv_test_bad", {}, json_file, image_root)  # lazy: no error yet
        with pytest.raises(ValueError, match="category_id 9"):
            DatasetCatalog.get("condconv_test_bad")
    finally:
        DatasetCatalog.remove("condconv_test_bad")
        MetadataCatalog.remove("condconv_test_bad")


def test_truncated_json(tmp_path):
    json_file, image_root = _write_coco(tmp_path)
    json_file.write_text(json_file.read_text()[:50])
    with pytest.raises(ValueError, match="not valid JSON.*cut short"):
        load_coco_json_checked(json_file, image_root)


def test_empty_boxes_are_skipped_with_a_warning(tmp_path, caplog):
    json_file, image_root = _write_coco(tmp_path, _set_bbox([5, 5, 0, 10]))
    with caplog.at_level(logging.WARNING, logger="condconv_det.data.datasets"):
        records = load_coco_json_checked(json_file, image_root)
    assert [len(r["annotations"]) for r in records] == [0, 1]
    assert "skipped 1 annotations whose box has zero width or height" in caplog.text


def test_boxes_slightly_outside_and_orphans_are_tolerated(tmp_path):
    def mutate(coco):
        coco["annotations"][1]["bbox"] = [-1.5, 0, 62, 41]  # rounding at the border
        coco["annotations"].append(
            {"id": 3, "image_id": 42, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 0}
        )

    json_file, image_root = _write_coco(tmp_path, mutate)
    assert [len(r["annotations"]) for r in load_coco_json_checked(json_file, image_root)] == [1, 1]

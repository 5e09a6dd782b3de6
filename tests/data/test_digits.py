"""The digits content of the bundled dataset generator: handwritten digits (scikit-learn's
bundled scans) as the objects, ten classes, validation digits never seen in training, exact
boxes; registered as digits_train / digits_val."""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

pytest.importorskip("sklearn")

from condconv_det.data import (  # noqa: E402
    DIGITS_CLASSES,
    DIGITS_DATASETS,
    register_digits,
    shapes,  # noqa: E402
)
from condconv_det.data.shapes import generate_shapes_dataset  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits") / "condconv_digits"
    return generate_shapes_dataset(
        root, num_train=6, num_val=3, content="digits", object_size=(14, 56), progress=False
    )


def test_ten_digit_classes_with_tight_boxes(tiny):
    with open(tiny["train_json"]) as f:
        coco = json.load(f)
    assert [c["name"] for c in coco["categories"]] == list(DIGITS_CLASSES)
    assert {c["supercategory"] for c in coco["categories"]} == {"digits"}
    assert coco["annotations"]
    for annotation in coco["annotations"]:
        assert 1 <= annotation["category_id"] <= 10
        mask = mask_util.decode(annotation["segmentation"]).astype(bool)
        x, y, w, h = annotation["bbox"]
        assert mask.sum() == mask[y : y + h, x : x + w].sum() == annotation["area"] > 0
        assert mask[y, x : x + w].any() and mask[y : y + h, x].any()


def test_validation_scans_are_not_training_scans():
    train, train_labels = shapes._digit_scans("train")
    val, val_labels = shapes._digit_scans("val")
    assert len(train) + len(val) == 1797 and set(val_labels.tolist()) == set(range(10))
    flat_train = {scan.tobytes() for scan in train}
    assert not any(scan.tobytes() in flat_train for scan in val)


def test_a_digit_mask_is_the_scaled_scan():
    rng = np.random.default_rng(0)
    mask = shapes._digit_mask(rng, 1, 40.0, "train")
    assert mask.dtype == bool and max(mask.shape) <= 40 and mask.sum() > 40
    # A "1" is much taller than wide.
    assert mask.shape[0] > 1.5 * mask.shape[1]


def test_digits_and_shapes_are_different_datasets(tmp_path):
    common = dict(num_train=2, num_val=1, progress=False)
    a = generate_shapes_dataset(tmp_path / "a", content="digits", **common)
    b = generate_shapes_dataset(tmp_path / "b", **common)
    with open(a["train_json"]) as f, open(b["train_json"]) as g:
        assert json.load(f)["categories"] != json.load(g)["categories"]
    with pytest.raises(ValueError, match="content must be one of"):
        generate_shapes_dataset(tmp_path / "c", content="letters", **common)


def test_registered_with_ten_classes(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    try:
        assert (
            register_digits(tmp_path / "digits", num_train=3, num_val=2, progress=False)
            == DIGITS_DATASETS
        )
        records = DatasetCatalog.get("digits_val")
        assert len(records) == 2
        assert MetadataCatalog.get("digits_train").thing_classes == list(DIGITS_CLASSES)
        assert os.path.isfile(MetadataCatalog.get("digits_val").json_file)
    finally:
        register_digits()

"""The bundled shapes dataset: deterministic, exact annotations, classes told apart by shape only,
regenerated when its parameters change, never left half written."""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from condconv_det.data import shapes
from condconv_det.data.shapes import SHAPES_CLASSES, generate_shapes_dataset

# Non-square, so a swapped height and width shows.
TINY = dict(num_train=6, num_val=3, image_size=(128, 160), seed=0, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes") / "condconv_shapes", **TINY)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = path
    return out


def test_layout_and_coco_format(tiny):
    from pycocotools.coco import COCO

    assert sorted(_files(tiny["root"])) == sorted(
        [
            "shapes_dataset.json",
            "annotations/instances_train.json",
            "annotations/instances_val.json",
        ]
        + [f"train/{i:06d}.png" for i in range(1, 7)]
        + [f"val/{i:06d}.png" for i in range(1, 4)]
    )
    for split, count in (("train", 6), ("val", 3)):
        coco = COCO(tiny[f"{split}_json"])
        assert len(coco.getImgIds()) == count
        assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [
            (i + 1, name) for i, name in enumerate(SHAPES_CLASSES)
        ]
        for image in coco.loadImgs(coco.getImgIds()):
            pixels = _pixels(os.path.join(tiny[f"{split}_images"], image["file_name"]))
            assert pixels.shape == (image["height"], image["width"], 3) == (128, 160, 3)
            assert coco.getAnnIds(imgIds=image["id"])  # every image has objects
        annotations = coco.loadAnns(coco.getAnnIds())
        assert len({a["id"] for a in annotations}) == len(annotations)
        assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in annotations)


def test_deterministic(tiny, tmp_path):
    again = generate_shapes_dataset(tmp_path / "again", **TINY)
    first, second = _files(tiny["root"]), _files(again["root"])
    assert sorted(first) == sorted(second)
    for name in first:
        if name.endswith(".json"):
            with open(first[name], "rb") as a, open(second[name], "rb") as b:
                assert a.read() == b.read(), name
        else:
            np.testing.assert_array_equal(_pixels(first[name]), _pixels(second[name]))
    other = generate_shapes_dataset(tmp_path / "other", **{**TINY, "seed": 1})
    assert _load(other["train_json"])["annotations"] != _load(tiny["train_json"])["annotations"]


def test_boxes_are_the_tight_boxes_of_the_rendered_masks(tiny):
    height, width = TINY["image_size"]
    for split in ("train", "val"):
        coco = _load(tiny[f"{split}_json"])
        for index, image in enumerate(coco["images"]):
            pixels, instances = shapes._render_image(
                shapes._image_rng(TINY["seed"], split, index), height, width, (2, 8), (10, 56)
            )
            stored = _pixels(os.path.join(tiny[f"{split}_images"], image["file_name"]))
            np.testing.assert_array_equal(stored, pixels)  # PNG is lossless
            annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            assert len(annotations) == len(instances)
            for annotation, instance in zip(annotations, instances):
                mask = mask_util.decode(annotation["segmentation"]).astype(bool)
                np.testing.assert_array_equal(mask, instance.mask)
                x, y, w, h = annotation["bbox"]
                # Tight: each side of the box touches the mask and nothing lies outside it.
                assert mask[y, x : x + w].any() and mask[y + h - 1, x : x + w].any()
                assert mask[y : y + h, x].any() and mask[y : y + h, x + w - 1].any()
                assert mask.sum() == mask[y : y + h, x : x + w].sum() == annotation["area"]
                assert annotation["category_id"] == instance.category + 1
                # The visible pixels show the object's colour (up to shading and noise).
                colour = stored[mask].astype(float).mean(axis=0)
                assert np.abs(colour - instance.colour).max() < 25


def test_sizes_include_coco_small_and_medium(tiny):
    areas = [a["bbox"][2] * a["bbox"][3] for a in _load(tiny["train_json"])["annotations"]]
    assert min(areas) < 32**2 <= max(areas)
    assert min(areas) >= 6 * 6


def test_overlaps_are_limited():
    hidden = []
    for index in range(30):
        _, instances = shapes._render_image(
            shapes._image_rng(0, "train", index), 128, 128, (2, 12), (8, 80)
        )
        for instance in instances:
            visible = instance.mask.sum() / instance.drawn_area
            assert visible >= shapes.MIN_VISIBLE_FRACTION
            hidden.append(visible < 1)
    assert 0 < np.mean(hidden) < 0.5  # overlaps happen, but most objects are whole


def test_classes_differ_in_shape():
    rng = np.random.default_rng(0)
    fill, hole = {}, {}
    for category, name in enumerate(SHAPES_CLASSES):
        masks = [shapes._shape_mask(rng, category, rng.uniform(8, 80)) for _ in range(200)]
        fill[name] = np.mean([m.mean() for m in masks])  # the part of the box the shape fills
        hole[name] = np.mean([not m[m.shape[0] // 2, m.shape[1] // 2] for m in masks])
    assert fill["circle"] == pytest.approx(np.pi / 4, abs=0.02)
    assert fill["square"] > 0.84
    assert fill["triangle"] == pytest.approx(0.5, abs=0.03)
    assert fill["star"] < 0.45
    assert hole["ring"] == 1 and all(hole[n] == 0 for n in SHAPES_CLASSES if n != "ring")
    ordered = sorted(n for n in SHAPES_CLASSES if n != "ring")
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            assert abs(fill[a] - fill[b]) > 0.05, (a, b)


def test_colour_does_not_give_the_class_away():
    colours = {c: [] for c in range(len(SHAPES_CLASSES))}
    for index in range(40):
        _, instances = shapes._render_image(
            shapes._image_rng(0, "train", index), 96, 96, (4, 8), (8, 40)
        )
        for instance in instances:
            colours[instance.category].append(instance.colour)
    overall = np.mean([c for cs in colours.values() for c in cs], axis=0)
    for category, values in colours.items():
        values = np.asarray(values)
        assert len(values) > 20
        assert np.abs(values.mean(axis=0) - overall).max() < 30, SHAPES_CLASSES[category]
        assert values.std(axis=0).min() > 40, SHAPES_CLASSES[category]


def test_reuses_a_complete_dataset(tiny, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated an up-to-date dataset")

    monkeypatch.setattr(shapes, "_write_split", fail)
    assert generate_shapes_dataset(tiny["root"], **TINY) == tiny


def test_regenerates_when_parameters_or_version_change(tmp_path, monkeypatch):
    root = tmp_path / "condconv_shapes"
    generate_shapes_dataset(root, **TINY)
    paths = generate_shapes_dataset(root, **{**TINY, "num_train": 4})
    assert len(_load(paths["train_json"])["images"]) == 4
    assert len(os.listdir(paths["train_images"])) == 4  # the old images are gone
    marker = _load(root / "shapes_dataset.json")
    assert marker["params"]["num_train"] == 4 and marker["version"] == shapes.GENERATOR_VERSION

    calls = []
    write_split = shapes._write_split
    monkeypatch.setattr(shapes, "_write_split", lambda *a: calls.append(a[1]) or write_split(*a))
    monkeypatch.setattr(shapes, "GENERATOR_VERSION", shapes.GENERATOR_VERSION + 1)
    generate_shapes_dataset(root, **{**TINY, "num_train": 4})
    assert calls == ["train", "val"]
    # A deleted image makes the dataset incomplete, so it is made again.
    os.remove(os.path.join(paths["val_images"], "000001.png"))
    generate_shapes_dataset(root, **{**TINY, "num_train": 4})
    assert calls == ["train", "val"] * 2
    assert sorted(os.listdir(tmp_path)) == ["condconv_shapes"]  # no temporary folders left


class _Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, count):
    render = shapes._render_image
    calls = []

    def render_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > count:
            raise _Interrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(shapes, "_render_image", render_then_fail)


def test_an_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch):
    root = tmp_path / "condconv_shapes"
    _interrupt_after(monkeypatch, 7)  # in the val split, after the train JSON was written
    with pytest.raises(_Interrupt):
        generate_shapes_dataset(root, **TINY)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    paths = generate_shapes_dataset(root, **TINY)
    assert len(_load(paths["val_json"])["images"]) == 3


def test_an_interrupted_regeneration_keeps_the_old_dataset(tmp_path, monkeypatch):
    root = tmp_path / "condconv_shapes"
    old = generate_shapes_dataset(root, **TINY)
    old_json = _load(old["train_json"])
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(_Interrupt):
        generate_shapes_dataset(root, **{**TINY, "num_train": 4})
    assert os.listdir(tmp_path) == ["condconv_shapes"]
    assert _load(old["train_json"]) == old_json
    assert shapes._is_complete(
        str(root), shapes._normalize_params(6, 3, (128, 160), 0, (2, 8), (10, 56))
    )


def test_never_overwrites_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a shapes dataset"):
        generate_shapes_dataset(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    generate_shapes_dataset(tmp_path / "empty", **TINY)


@pytest.mark.parametrize(
    "bad",
    [
        {"num_train": 0},
        {"image_size": 16},
        {"objects_per_image": (3, 2)},
        {"object_size": (8, 120)},
        {"object_size": (2, 20)},
        {"seed": -1},
    ],
)
def test_rejects_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_shapes_dataset(tmp_path / "d", **{**TINY, **bad})
    assert not (tmp_path / "d").exists()


def test_plain_background_is_one_grey_under_the_noise(tmp_path):
    paths = generate_shapes_dataset(
        tmp_path / "plain", num_train=2, num_val=1, background="plain", progress=False
    )
    with open(paths["train_json"]) as f:
        coco = json.load(f)
    for image in coco["images"]:
        pixels = _pixels(os.path.join(paths["train_images"], image["file_name"])).astype(float)
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        objects = np.zeros(pixels.shape[:2], bool)
        for a in annotations:
            objects |= mask_util.decode(a["segmentation"]).astype(bool)
        background = pixels[~objects]
        assert abs(background.mean() - 128) < 2 and background.std() < 10
    with pytest.raises(ValueError, match="background must be one of"):
        generate_shapes_dataset(
            tmp_path / "x", num_train=1, num_val=1, background="stripes", progress=False
        )


def test_single_object_shapes_are_registered(tmp_path):
    from detectron2.data import DatasetCatalog

    from condconv_det.data import SHAPES_SINGLE_DATASETS, register_shapes_single

    try:
        assert (
            register_shapes_single(tmp_path / "single", num_train=2, num_val=5, progress=False)
            == SHAPES_SINGLE_DATASETS
        )
        records = DatasetCatalog.get("shapes_single_val")
        assert len(records) == 5 and all(len(r["annotations"]) == 1 for r in records)
    finally:
        register_shapes_single()


def test_the_large_shapes_set_is_the_plain_set_larger(tmp_path, monkeypatch):
    import json

    from detectron2.data import DatasetCatalog

    from condconv_det.data import SHAPES_LARGE_DATASETS, datasets, register_shapes_large

    try:
        # Keyword arguments replace its sizes; the background stays plain.
        assert (
            register_shapes_large(tmp_path / "large", num_train=3, num_val=2, progress=False)
            == SHAPES_LARGE_DATASETS
        )
        assert len(DatasetCatalog.get("shapes_large_train")) == 3
        marker = json.loads((tmp_path / "large" / "shapes_dataset.json").read_text())
        assert marker["params"]["background"] == "plain"
        # Its own sizes, which the experiments in docs/training.md name.
        asked = {}
        monkeypatch.setattr(
            datasets, "generate_shapes_dataset", lambda root, **kw: asked.update(kw)
        )
        monkeypatch.setattr(datasets, "load_coco_json_checked", lambda *args: [])
        register_shapes_large(tmp_path / "other")
        DatasetCatalog.get("shapes_large_val")
        assert asked == dict(background="plain", num_train=6400, num_val=1000)
    finally:
        register_shapes_large()

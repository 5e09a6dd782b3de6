"""SSDDatasetMapper end to end on tiny on-disk records, and the INPUT.SSD config keys."""

import inspect
import pickle

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BoxMode
from PIL import Image

from condconv_det import add_condconv_config
from condconv_det.data import (
    RandomExpand,
    RandomMinIoUCrop,
    RandomPhotometricDistort,
    SSDDatasetMapper,
    build_ssd_augmentation,
)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
# A 120x160 image: three boxes painted COLORS[category], B given as XYWH.
BOXES = [[10, 10, 60, 50], [80, 20, 150, 100], [20, 70, 60, 110]]


def _cfg(size=64, **ssd):
    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.SSD.SIZE = size
    for key, value in ssd.items():
        cfg.INPUT.SSD[key] = value
    return cfg


def _write(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


def _painted(h, w, boxes):
    image = np.full((h, w, 3), 128, np.uint8)
    for (x0, y0, x1, y1), color in zip(boxes, COLORS):
        image[y0:y1, x0:x1] = color
    return image


def _anno(box, category, mode=BoxMode.XYXY_ABS, **extra):
    return {"bbox": list(box), "bbox_mode": mode, "category_id": category, **extra}


@pytest.fixture
def record(tmp_path):
    file_name = _write(tmp_path / "painted.png", _painted(120, 160, BOXES))
    (x0, y0, x1, y1) = BOXES[1]
    annotations = [
        _anno(BOXES[0], 0),
        _anno([x0, y0, x1 - x0, y1 - y0], 1, BoxMode.XYWH_ABS),
        _anno(BOXES[2], 2),
    ]
    return {
        "file_name": file_name,
        "image_id": 7,
        "height": 120,
        "width": 160,
        "annotations": annotations,
    }


def test_train_mapper_end_to_end_keeps_boxes_on_their_objects(record):
    mapper = SSDDatasetMapper(_cfg(128, PHOTOMETRIC=False), is_train=True)
    np.random.seed(0)
    checked = 0
    for _ in range(30):
        out = mapper(record)
        assert {"image", "instances", "height", "width", "file_name", "image_id"} <= set(out)
        assert "annotations" not in out
        assert (out["height"], out["width"], out["image_id"]) == (120, 160, 7)
        assert (
            tuple(out["image"].shape) == (3, 128, 128) and str(out["image"].dtype) == "torch.uint8"
        )
        instances = out["instances"]
        assert instances.image_size == (128, 128) and len(instances) <= 3
        boxes = instances.gt_boxes.tensor
        assert (boxes >= 0).all() and (boxes <= 128).all() and instances.gt_boxes.nonempty().all()
        image = out["image"].permute(1, 2, 0).numpy()
        for box, category in zip(boxes.numpy(), instances.gt_classes.tolist()):
            if min(box[2] - box[0], box[3] - box[1]) < 8:
                continue  # a small box's centre pixel is blurred by the resize
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            np.testing.assert_allclose(image[cy, cx], COLORS[category], atol=2)
            checked += 1
    assert checked >= 20
    assert record["annotations"][1]["bbox_mode"] == BoxMode.XYWH_ABS  # the input is not modified


def test_train_mapper_with_photometric_distortion(record):
    mapper = SSDDatasetMapper(_cfg(64), is_train=True)
    np.random.seed(1)
    for _ in range(5):
        out = mapper(record)
        assert tuple(out["image"].shape) == (3, 64, 64)
        assert out["instances"].gt_boxes.tensor.shape[1] == 4


def test_mapper_drops_objects_whose_centre_leaves_the_crop(tmp_path):
    # A 100x100 image; centres A (30, 30), B (80, 80), C (15, 65), D (55, 40); the crop is
    # x in [8, 58], y in [5, 55]: A and D stay (D clipped), B and C go.
    boxes = [[10, 10, 50, 50], [60, 60, 100, 100], [0, 40, 30, 90], [40, 30, 70, 50]]
    annotations = [_anno(b, i) for i, b in enumerate(boxes)]
    annotations[0]["segmentation"] = [[10, 10, 50, 10, 50, 50]]  # SSD drops segmentations
    annotations.append(_anno([0, 0, 100, 100], 5, iscrowd=1))  # crowd: neither crop nor instance
    annotations.append(_anno([20, 20, 20, 40], 6))  # degenerate: dropped
    record = {
        "file_name": _write(tmp_path / "crop.png", np.zeros((100, 100, 3), np.uint8)),
        "image_id": 1,
        "annotations": annotations,
    }
    crop = RandomMinIoUCrop((0.5,), allow_no_crop=False)
    seen = []

    def sample(h, w):
        seen.append((h, w))
        return (8, 5, 50, 50)

    crop._sample_crop = sample
    out = SSDDatasetMapper(is_train=True, augmentations=[crop], image_format="RGB")(record)
    assert seen == [(100, 100)]
    assert tuple(out["image"].shape) == (3, 50, 50)
    assert (out["height"], out["width"]) == (100, 100)  # from the image, for the predictions
    instances = out["instances"]
    np.testing.assert_array_equal(instances.gt_boxes.tensor, [[2, 5, 42, 45], [32, 25, 50, 45]])
    assert instances.gt_classes.tolist() == [0, 3]
    assert not instances.has("gt_masks")


def test_grayscale_image_becomes_three_channels(tmp_path):
    gray = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)
    record = {"file_name": _write(tmp_path / "gray.png", gray, mode="L"), "image_id": 3}
    for image_format in ("RGB", "BGR"):
        cfg = _cfg(32, EXPAND=False)  # the expand fill, the pixel mean, is not grey
        cfg.INPUT.FORMAT = image_format
        for is_train in (True, False):
            out = SSDDatasetMapper(cfg, is_train=is_train)(record)
            image = out["image"]
            assert tuple(image.shape) == (3, 32, 32)
            assert (image[0] == image[1]).all() and (image[1] == image[2]).all()
            assert (out["height"], out["width"]) == (30, 40)


@pytest.mark.parametrize("content", [b"this is not an image", None, "truncated"])
def test_unreadable_image_error_names_the_file_and_the_record(tmp_path, record, content):
    path = tmp_path / "broken.png"
    if content == "truncated":
        content = open(record["file_name"], "rb").read()[:200]
    if content is not None:
        path.write_bytes(content)
    record = dict(record, file_name=str(path), image_id=42)
    mapper = SSDDatasetMapper(_cfg(32), is_train=True)
    with pytest.raises(OSError) as info:
        mapper(record)
    message = str(info.value)
    assert str(path) in message and "'image_id': 42" in message and "3 annotations" in message
    assert info.value.__cause__ is not None


def test_size_mismatch_is_an_error(record):
    with pytest.raises(SizeMismatchError, match="painted.png"):
        SSDDatasetMapper(_cfg(32), is_train=True)(dict(record, height=100))


def test_eval_mapper_resizes_and_keeps_the_original_size(record):
    out = SSDDatasetMapper(_cfg(48), is_train=False)(record)
    assert tuple(out["image"].shape) == (3, 48, 48)
    assert (out["height"], out["width"]) == (120, 160)
    assert "instances" not in out and "annotations" not in out
    del record["height"], record["width"]
    out = SSDDatasetMapper(_cfg(48), is_train=False)(record)
    assert (out["height"], out["width"]) == (120, 160)


@pytest.mark.parametrize("annotations", [None, [], [_anno([0, 0, 10, 10], 1, iscrowd=1)]])
def test_image_without_annotations_gives_empty_instances(record, annotations):
    if annotations is None:
        del record["annotations"]
    else:
        record["annotations"] = annotations
    np.random.seed(0)
    for _ in range(5):
        instances = SSDDatasetMapper(_cfg(32), is_train=True)(record)["instances"]
        assert len(instances) == 0 and instances.image_size == (32, 32)
        assert tuple(instances.gt_boxes.tensor.shape) == (0, 4)
        assert str(instances.gt_classes.dtype) == "torch.int64"


def test_mapper_works_in_a_detectron2_loader(record):
    mapper = pickle.loads(pickle.dumps(SSDDatasetMapper(_cfg(32), is_train=True)))
    loader = build_detection_train_loader([record] * 2, mapper=mapper, total_batch_size=2)
    batch = next(iter(loader))
    assert len(batch) == 2 and all(tuple(x["image"].shape) == (3, 32, 32) for x in batch)


# ---------------------------------------------------------------- config


def test_build_ssd_augmentation_follows_the_config():
    cfg = _cfg(300)
    cfg.INPUT.FORMAT = "BGR"
    augs = build_ssd_augmentation(cfg, is_train=True)
    assert [type(a) for a in augs] == [
        RandomPhotometricDistort,
        RandomExpand,
        RandomMinIoUCrop,
        T.RandomFlip,
        T.Resize,
    ]
    assert augs[0].image_format == "BGR"
    assert augs[1].fill == tuple(cfg.MODEL.PIXEL_MEAN)  # in INPUT.FORMAT's channel order
    assert augs[-1].shape == (300, 300)
    (resize,) = build_ssd_augmentation(cfg, is_train=False)
    assert isinstance(resize, T.Resize) and resize.shape == (300, 300)
    off = _cfg(320, PHOTOMETRIC=False, EXPAND=False, MIN_IOU_CROP=False, FLIP=False)
    (resize,) = build_ssd_augmentation(off, is_train=True)
    assert resize.shape == (320, 320)


def test_config_defaults_equal_constructor_defaults():
    c = _cfg(300).INPUT.SSD

    def defaults(cls):
        return {
            k: p.default
            for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    photometric, expand, crop = (
        defaults(RandomPhotometricDistort),
        defaults(RandomExpand),
        defaults(RandomMinIoUCrop),
    )
    assert photometric["brightness_delta"] == c.BRIGHTNESS_DELTA
    assert photometric["contrast_range"] == tuple(c.CONTRAST_RANGE)
    assert photometric["saturation_range"] == tuple(c.SATURATION_RANGE)
    assert photometric["hue_delta"] == c.HUE_DELTA
    assert (expand["max_ratio"], expand["prob"]) == (c.EXPAND_MAX_RATIO, c.EXPAND_PROB)
    assert crop["min_ious"] == tuple(c.CROP_MIN_IOUS)
    assert crop["min_scale"] == c.CROP_MIN_SCALE
    assert crop["aspect_range"] == tuple(c.CROP_ASPECT_RANGE)
    assert crop["num_trials"] == c.CROP_TRIALS


@pytest.mark.parametrize(
    "key, value",
    [
        ("SIZE", 0),
        ("BRIGHTNESS_DELTA", -1.0),
        ("CONTRAST_RANGE", (1.5, 0.5)),
        ("SATURATION_RANGE", (-0.5, 1.5)),
        ("HUE_DELTA", 200.0),
        ("EXPAND_MAX_RATIO", 0.5),
        ("EXPAND_PROB", 1.5),
        ("CROP_MIN_IOUS", [0.1, 1.5]),
        ("CROP_MIN_SCALE", 0.0),
        ("CROP_ASPECT_RANGE", (0.0, 2.0)),
        ("CROP_TRIALS", 0),
    ],
)
def test_out_of_range_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"INPUT.SSD.{key}"):
        SSDDatasetMapper(_cfg(**{key: value}), is_train=True)


def test_photometric_needs_rgb_or_bgr():
    cfg = _cfg()
    cfg.INPUT.FORMAT = "L"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        build_ssd_augmentation(cfg, is_train=True)
    cfg.INPUT.SSD.PHOTOMETRIC = False
    assert len(build_ssd_augmentation(cfg, is_train=True)) == 4

"""SSD's augmentations keep boxes consistent with the image, on hand-made images and boxes."""

import colorsys

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import Boxes, pairwise_iou

from condconv_det.data.transforms import (
    ExpandTransform,
    PhotometricDistortTransform,
    RandomExpand,
    RandomMinIoUCrop,
    RandomPhotometricDistort,
    box_centers_in_crop,
    crop_satisfies_min_iou,
    hsv_to_rgb,
    rgb_to_hsv,
)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
BACKGROUND = (128, 128, 128)


def _painted(h, w, boxes):
    """An (h, w, 3) uint8 image: grey, with box i painted COLORS[i]."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    for (x0, y0, x1, y1), color in zip(boxes, COLORS):
        image[y0:y1, x0:x1] = color
    return image


def _clip(boxes, h, w):
    return np.clip(boxes, 0, [w, h, w, h])


def _assert_colors_match_boxes(image, boxes):
    """Box i (integer XYXY) is exactly the set of pixels of colour COLORS[i]."""
    for (x0, y0, x1, y1), color in zip(boxes.round().astype(int), COLORS):
        expected = np.zeros(image.shape[:2], bool)
        expected[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(np.all(image == color, axis=-1), expected)


# ---------------------------------------------------------------- photometric distortion


def test_hsv_conversion_matches_colorsys():
    rgb = np.random.RandomState(0).rand(500, 3)
    rgb[:5] = rgb[:5, :1]  # greys: hue and saturation 0
    rgb[5], rgb[6] = 0, 1
    hsv = rgb_to_hsv(rgb)
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-12)
    np.testing.assert_allclose(hsv_to_rgb(hsv), rgb, atol=1e-12)
    np.testing.assert_allclose(hsv_to_rgb(hsv + [1, 0, 0]), rgb, atol=1e-12)  # hue wraps


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_photometric_transform_keeps_dtype_shape_range_and_boxes(dtype):
    image = (np.random.RandomState(0).rand(17, 23, 3) * 255).astype(dtype)
    boxes = np.array([[1.0, 2.0, 10.0, 12.0], [0.0, 0.0, 23.0, 17.0]])
    for params in [
        dict(brightness_delta=32, contrast=1.5, saturation=1.5, hue_delta=18),
        dict(
            brightness_delta=-32, contrast=0.5, saturation=0.5, hue_delta=-18, contrast_first=False
        ),
    ]:
        tfm = PhotometricDistortTransform(**params)
        out = tfm.apply_image(image)
        assert out.dtype == image.dtype and out.shape == image.shape
        assert out.min() >= 0 and out.max() <= 255
        assert not np.array_equal(out, image)
        np.testing.assert_array_equal(tfm.apply_box(boxes.copy()), boxes)
    np.testing.assert_array_equal(PhotometricDistortTransform().apply_image(image), image)


def test_photometric_transform_components():
    grey = np.full((2, 2, 3), 100, np.uint8)
    assert (PhotometricDistortTransform(brightness_delta=20).apply_image(grey) == 120).all()
    assert (PhotometricDistortTransform(brightness_delta=-120).apply_image(grey) == 0).all()
    assert (PhotometricDistortTransform(contrast=1.5).apply_image(grey) == 150).all()
    assert (PhotometricDistortTransform(contrast=3.0).apply_image(grey) == 255).all()

    pixel = np.array([[[200, 100, 50]]], np.uint8)
    desaturated = PhotometricDistortTransform(saturation=0.0).apply_image(pixel)
    np.testing.assert_array_equal(desaturated, [[[200, 200, 200]]])  # HSV value kept

    red_rgb = np.array([[[255, 0, 0]]], np.uint8)
    red_bgr = red_rgb[..., ::-1].copy()
    rotate = dict(hue_delta=120.0)
    green = [[[0, 255, 0]]]
    np.testing.assert_array_equal(PhotometricDistortTransform(**rotate).apply_image(red_rgb), green)
    bgr = PhotometricDistortTransform(**rotate, image_format="BGR").apply_image(red_bgr)
    np.testing.assert_array_equal(bgr, green)


def test_photometric_transform_bgr_is_rgb_reversed():
    image = (np.random.RandomState(1).rand(9, 11, 3) * 255).astype(np.uint8)
    params = dict(brightness_delta=10, contrast=1.2, saturation=0.7, hue_delta=15)
    rgb = PhotometricDistortTransform(**params).apply_image(image)
    bgr = PhotometricDistortTransform(**params, image_format="BGR").apply_image(image[..., ::-1])
    np.testing.assert_array_equal(bgr[..., ::-1], rgb)
    with pytest.raises(ValueError, match="image_format"):
        PhotometricDistortTransform(image_format="L")


def test_random_photometric_distort_sampling():
    image = np.zeros((4, 4, 3), np.uint8)
    never = RandomPhotometricDistort(prob=0.0)
    assert all(isinstance(never.get_transform(image), T.NoOpTransform) for _ in range(20))

    always = RandomPhotometricDistort(prob=1.0, image_format="BGR")
    np.random.seed(0)
    tfm = always.get_transform(image)
    assert 0 < abs(tfm.brightness_delta) <= 32 and abs(tfm.hue_delta) <= 18
    assert 0.5 <= tfm.contrast <= 1.5 and 0.5 <= tfm.saturation <= 1.5
    assert tfm.image_format == "BGR"
    np.random.seed(0)
    again = always.get_transform(image)
    assert (again.brightness_delta, again.contrast_first) == (
        tfm.brightness_delta,
        tfm.contrast_first,
    )

    np.random.seed(0)
    half = RandomPhotometricDistort()
    tfms = [half.get_transform(image) for _ in range(400)]
    brightened = np.mean(
        [not isinstance(t, T.NoOpTransform) and t.brightness_delta != 0 for t in tfms]
    )
    assert 0.4 < brightened < 0.6


# ---------------------------------------------------------------- expand (zoom out)


def test_expand_transform_shifts_boxes_and_fills_with_mean():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    tfm = ExpandTransform(3, 2, 6, 4, 12, 10, fill=(10.4, 20.6, 30.0))
    out = tfm.apply_image(image)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2:6, 3:9], image)
    canvas = np.ones((10, 12), bool)
    canvas[2:6, 3:9] = False
    np.testing.assert_array_equal(out[canvas], np.tile([10, 21, 30], (canvas.sum(), 1)))
    boxes = tfm.apply_box(np.array([[0.0, 0.0, 6.0, 4.0], [1.5, 0.5, 2.5, 3.0]]))
    np.testing.assert_array_equal(boxes, [[3, 2, 9, 6], [4.5, 2.5, 5.5, 5]])
    np.testing.assert_array_equal(tfm.inverse().apply_image(out), image)
    seg = tfm.apply_segmentation(np.ones((4, 6), np.uint8))
    assert seg.shape == (10, 12) and seg.sum() == 24

    floats = ExpandTransform(0, 0, 6, 4, 7, 4, fill=(0.5, 1.5, 2.5)).apply_image(image / 1.0)
    np.testing.assert_array_equal(floats[0, 6], [0.5, 1.5, 2.5])
    with pytest.raises(ValueError, match="fit"):
        ExpandTransform(1, 0, 6, 4, 6, 4)
    with pytest.raises(ValueError, match="channels"):
        ExpandTransform(0, 0, 6, 4, 8, 8, fill=(1, 2)).apply_image(image)


def test_random_expand_keeps_boxes_on_their_pixels():
    boxes = np.array([[2, 3, 10, 9], [12, 0, 20, 6], [0, 10, 5, 16]], np.float64)
    image = _painted(16, 20, boxes.astype(int))
    mean = (1.0, 2.0, 3.0)
    aug = RandomExpand(3.0, fill=mean, prob=1.0)
    np.random.seed(0)
    for _ in range(10):
        inp = T.AugInput(image, boxes=boxes.copy())
        tfm = aug(inp)
        h, w = inp.image.shape[:2]
        assert 16 <= h <= 48 and 20 <= w <= 60
        np.testing.assert_array_equal(inp.boxes - boxes, np.tile([tfm.x0, tfm.y0] * 2, (3, 1)))
        _assert_colors_match_boxes(inp.image, inp.boxes)
        outside = np.ones((h, w), bool)
        outside[tfm.y0 : tfm.y0 + 16, tfm.x0 : tfm.x0 + 20] = False
        assert (inp.image[outside] == mean).all()

    assert isinstance(RandomExpand(prob=0.0).get_transform(image), T.NoOpTransform)
    with pytest.raises(ValueError, match="max_ratio"):
        RandomExpand(0.5)


# ---------------------------------------------------------------- min-IoU random crop

# A 100x100 image; A's centre (30, 30), B's (80, 80), C's (15, 65), D's (55, 40).
CROP_BOXES = np.array(
    [[10, 10, 50, 50], [60, 60, 100, 100], [0, 40, 30, 90], [40, 30, 70, 50]], np.float64
)


def _scripted(aug, crops):
    """Makes ``aug`` sample ``crops`` in order; returns the list of crops not consumed."""
    crops = list(crops)
    aug._sample_crop = lambda h, w: crops.pop(0)
    return crops


def test_min_iou_crop_scripted_case():
    aug = RandomMinIoUCrop((0.5,), allow_no_crop=False, num_trials=10)
    left = _scripted(
        aug,
        [
            None,  # aspect ratio out of range: a failed trial
            (70, 0, 30, 50),  # no box centre inside
            (0, 0, 60, 60),  # A and D inside, but IoU(A) = 0.44 and IoU(D) = 0.11
            (8, 5, 50, 50),  # A inside with IoU 0.64: taken
            (0, 0, 100, 100),
        ],
    )
    image = np.zeros((100, 100, 3), np.uint8)
    tfm = aug.get_transform(image, CROP_BOXES)
    assert left == [(0, 0, 100, 100)]
    assert isinstance(tfm, T.CropTransform)
    assert (tfm.x0, tfm.y0, tfm.w, tfm.h, tfm.orig_w, tfm.orig_h) == (8, 5, 50, 50, 100, 100)
    assert tfm.apply_image(image).shape == (50, 50, 3)

    moved = tfm.apply_box(CROP_BOXES.copy())
    keep = box_centers_in_crop(moved, (0, 0, 50, 50))
    np.testing.assert_array_equal(keep, [True, False, False, True])
    np.testing.assert_array_equal(_clip(moved[keep], 50, 50), [[2, 5, 42, 45], [32, 25, 50, 45]])


def test_min_iou_crop_gives_up_after_num_trials():
    aug = RandomMinIoUCrop((0.5,), allow_no_crop=False, num_trials=3)
    left = _scripted(aug, [(70, 0, 30, 50)] * 4)
    tfm = aug.get_transform(np.zeros((100, 100, 3), np.uint8), CROP_BOXES)
    assert isinstance(tfm, T.NoOpTransform) and len(left) == 1


def test_min_iou_crop_condition():
    assert crop_satisfies_min_iou((8, 5, 50, 50), CROP_BOXES, 0.64)
    assert not crop_satisfies_min_iou((8, 5, 50, 50), CROP_BOXES, 0.65)
    assert not crop_satisfies_min_iou((70, 0, 30, 50), CROP_BOXES, 0.0)  # no centre inside
    # A box with its centre on the crop border is not inside (strict, as ssd.pytorch).
    np.testing.assert_array_equal(box_centers_in_crop(CROP_BOXES, (0, 0, 30, 30)), [False] * 4)


def test_min_iou_crop_no_crop_mode_and_no_boxes_are_identity():
    image = np.zeros((50, 60, 3), np.uint8)
    only_no_crop = RandomMinIoUCrop((), allow_no_crop=True)
    assert all(
        isinstance(only_no_crop.get_transform(image, CROP_BOXES), T.NoOpTransform)
        for _ in range(10)
    )
    aug = RandomMinIoUCrop(allow_no_crop=False)
    assert isinstance(aug.get_transform(image, np.zeros((0, 4))), T.NoOpTransform)
    assert isinstance(aug.get_transform(image, None), T.NoOpTransform)
    with pytest.raises(ValueError, match="mode"):
        RandomMinIoUCrop((), allow_no_crop=False)


@pytest.mark.parametrize("min_iou", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9])
def test_min_iou_crop_satisfies_its_constraints(min_iou):
    rng = np.random.RandomState(1)
    aug = RandomMinIoUCrop((min_iou,), allow_no_crop=False, num_trials=500)
    np.random.seed(int(min_iou * 10))
    cropped = 0
    for _ in range(30):
        h, w = rng.randint(40, 120, size=2)
        xy = rng.rand(3, 2) * [w - 10, h - 10]
        boxes = np.concatenate([xy, xy + 10 + rng.rand(3, 2) * [w, h]], axis=1)
        boxes[0] = [0.1 * w, 0.1 * h, 0.8 * w, 0.9 * h]  # so that high IoUs are reachable
        boxes = _clip(boxes, h, w)
        image = rng.randint(0, 255, size=(h, w, 3)).astype(np.uint8)
        tfm = aug.get_transform(image, boxes)
        if isinstance(tfm, T.NoOpTransform):
            continue
        cropped += 1
        x0, y0, cw, ch = tfm.x0, tfm.y0, tfm.w, tfm.h
        assert 0 <= x0 and x0 + cw <= w and 0 <= y0 and y0 + ch <= h
        assert cw >= int(0.3 * w) and ch >= int(0.3 * h) and 0.5 <= cw / ch <= 2.0
        np.testing.assert_array_equal(tfm.apply_image(image), image[y0 : y0 + ch, x0 : x0 + cw])
        inside = box_centers_in_crop(boxes, (x0, y0, cw, ch))
        assert inside.any()
        crop = torch.tensor([[x0, y0, x0 + cw, y0 + ch]], dtype=torch.float64)
        iou = pairwise_iou(Boxes(torch.from_numpy(boxes[inside])), Boxes(crop))
        assert iou.max() >= min_iou - 1e-9
    assert cropped >= 10


# ---------------------------------------------------------------- the pipeline and the resize


def test_geometric_pipeline_keeps_boxes_on_their_pixels():
    boxes = np.array([[5, 5, 25, 20], [40, 10, 70, 45], [10, 30, 35, 48]], np.float64)
    image = _painted(50, 80, boxes.astype(int))
    augs = T.AugmentationList(
        [
            RandomExpand(3.0, fill=(1.0, 2.0, 3.0)),
            RandomMinIoUCrop(),
            T.RandomFlip(horizontal=True),
        ]
    )
    np.random.seed(0)
    kinds = set()
    for _ in range(40):
        inp = T.AugInput(image, boxes=boxes.copy())
        tfms = augs(inp)
        kinds.update(type(t).__name__ for t in tfms)
        h, w = inp.image.shape[:2]
        keep = box_centers_in_crop(inp.boxes, (0, 0, w, h))
        assert keep.any()
        kept = _clip(inp.boxes, h, w)
        kept[~keep] = 0  # dropped boxes: no pixel should be expected
        image_without_dropped = inp.image.copy()
        for i in np.flatnonzero(~keep):
            image_without_dropped[np.all(inp.image == COLORS[i], axis=-1)] = 0
        _assert_colors_match_boxes(image_without_dropped, kept)
    assert {"ExpandTransform", "CropTransform", "HFlipTransform"} <= kinds


def test_resize_to_square_scales_boxes_exactly():
    boxes = np.array([[20.0, 30.0, 100.0, 120.0], [0.0, 0.0, 200.0, 150.0]])
    image = _painted(150, 200, boxes[:1].astype(int))
    inp = T.AugInput(image, boxes=boxes.copy())
    T.AugmentationList([T.Resize((300, 300))])(inp)
    assert inp.image.shape == (300, 300, 3)
    np.testing.assert_allclose(inp.boxes, [[30, 60, 150, 240], [0, 0, 300, 300]])
    assert (inp.image[62:238, 32:148] == COLORS[0]).all()  # the box's interior

"""SSD's data augmentation (Liu et al., ECCV 2016, Sec. 2.2 "Data augmentation") as detectron2
:class:`Augmentation` s and :class:`Transform` s.

The training pipeline of the paper (and of ssd.pytorch / torchvision's ``"ssd"`` preset) is
photometric distortion -> zoom out ("expand") -> min-IoU random crop -> horizontal flip ->
resize to a fixed square. The first three are here; flip and resize are detectron2's
``RandomFlip`` and ``Resize``. :func:`condconv_det.data.build_ssd_augmentation` assembles them.

Images are numpy ``(H, W, C)`` arrays as in detectron2's mappers: uint8, or float in the
0-255 range. Every augmentation draws from numpy's global RNG, like detectron2's, so
``np.random.seed`` (which detectron2 seeds per data-loader worker) makes them reproducible.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T

__all__ = [
    "PHOTOMETRIC_FORMATS",
    "ExpandTransform",
    "PhotometricDistortTransform",
    "RandomExpand",
    "RandomMinIoUCrop",
    "RandomPhotometricDistort",
    "box_centers_in_crop",
    "crop_satisfies_min_iou",
    "hsv_to_rgb",
    "rgb_to_hsv",
]

# Channel orders the photometric distortion takes (INPUT.FORMAT): saturation and hue need to know
# which channel is red.
PHOTOMETRIC_FORMATS = ("RGB", "BGR")


def _check_image_format(image_format: str) -> None:
    if image_format not in PHOTOMETRIC_FORMATS:
        choices = " or ".join(repr(f) for f in PHOTOMETRIC_FORMATS)
        raise ValueError(f"image_format must be {choices}, got {image_format!r}")


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Converts RGB to HSV, like :func:`colorsys.rgb_to_hsv` on every pixel.

    Args:
        rgb: float array ``(..., 3)``, values in [0, 1].

    Returns:
        float array ``(..., 3)``: hue in [0, 1) (a full turn is 1), saturation and value in [0, 1].
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = rgb.max(axis=-1)
    minc = rgb.min(axis=-1)
    delta = maxc - minc
    gray = delta <= 0
    safe_delta = np.where(gray, 1.0, delta)
    s = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    rc = (maxc - r) / safe_delta
    gc = (maxc - g) / safe_delta
    bc = (maxc - b) / safe_delta
    h = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(gray, 0.0, (h / 6.0) % 1.0)
    return np.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`, like :func:`colorsys.hsv_to_rgb` on every pixel.

    Args:
        hsv: float array ``(..., 3)``: hue (a full turn is 1; any value, taken modulo 1),
            saturation and value in [0, 1].

    Returns:
        float array ``(..., 3)``, RGB in [0, 1].
    """
    h, s, v = hsv[..., 0] % 1.0, hsv[..., 1], hsv[..., 2]
    h6 = h * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    # (r, g, b) for the six 60-degree sectors of the hue circle.
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    conditions = [sector == i for i in range(6)]
    return np.stack(
        [np.select(conditions, [c[channel] for c in choices]) for channel in range(3)], axis=-1
    )


class PhotometricDistortTransform(T.Transform):
    """SSD's photometric distortion with fixed parameters; pixel values only, so boxes and
    segmentations are unchanged.

    In the order of ssd.pytorch's ``PhotometricDistort`` (from the paper's Caffe code): add
    ``brightness_delta`` to every channel; then multiply by ``contrast`` either first or last;
    in between, in HSV, multiply the saturation by ``saturation`` and rotate the hue by
    ``hue_delta`` degrees. Contrast is a plain multiplication, as in the Caffe code, not a blend
    with the mean as in PIL / torchvision. Values are clipped to [0, 255] after every step.

    Args:
        brightness_delta: added to every pixel value (0-255 scale); 0 leaves brightness as is.
        contrast: multiplies every pixel value; 1 leaves contrast as is.
        saturation: multiplies the HSV saturation; 1 leaves it as is.
        hue_delta: hue rotation in degrees; 0 leaves hue as is.
        contrast_first: whether contrast comes before (True) or after (False) saturation and hue.
        image_format: channel order of the images, "RGB" or "BGR" (only saturation and hue
            depend on it).
    """

    def __init__(
        self,
        *,
        brightness_delta: float = 0.0,
        contrast: float = 1.0,
        saturation: float = 1.0,
        hue_delta: float = 0.0,
        contrast_first: bool = True,
        image_format: str = "RGB",
    ):
        super().__init__()
        _check_image_format(image_format)
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """
        Args:
            img: ``(H, W, 3)`` uint8, or float in the 0-255 range.

        Returns:
            the distorted image, same shape and dtype.
        """
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
        x = img.astype(np.float32)
        if self.brightness_delta != 0:
            x = np.clip(x + self.brightness_delta, 0, 255)
        if self.contrast_first and self.contrast != 1:
            x = np.clip(x * self.contrast, 0, 255)
        if self.saturation != 1 or self.hue_delta != 0:
            x = self._apply_hsv(x)
        if not self.contrast_first and self.contrast != 1:
            x = np.clip(x * self.contrast, 0, 255)
        if img.dtype == np.uint8:
            return np.round(x).astype(np.uint8)
        return x.astype(img.dtype, copy=False)

    def _apply_hsv(self, x: np.ndarray) -> np.ndarray:
        rgb = x[..., ::-1] if self.image_format == "BGR" else x
        hsv = rgb_to_hsv(rgb / 255.0)
        hsv[..., 0] += self.hue_delta / 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 1)
        rgb = np.clip(hsv_to_rgb(hsv) * 255.0, 0, 255).astype(np.float32)
        return rgb[..., ::-1] if self.image_format == "BGR" else rgb

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class RandomPhotometricDistort(T.Augmentation):
    """Samples a :class:`PhotometricDistortTransform`: each of brightness, contrast, saturation
    and hue is applied with probability ``prob``, and contrast goes first or last with
    probability 1/2 (ssd.pytorch's ``PhotometricDistort``, without its channel swap).

    Args:
        brightness_delta: brightness shift drawn uniformly from
            ``[-brightness_delta, brightness_delta]`` (0-255 scale).
        contrast_range: contrast factor drawn uniformly from ``[low, high]``.
        saturation_range: saturation factor drawn uniformly from ``[low, high]``.
        hue_delta: hue rotation in degrees drawn uniformly from ``[-hue_delta, hue_delta]``.
        prob: probability of applying each of the four distortions.
        image_format: channel order of the images, "RGB" or "BGR".
    """

    def __init__(
        self,
        *,
        brightness_delta: float = 32.0,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        prob: float = 0.5,
        image_format: str = "RGB",
    ):
        super().__init__()
        _check_image_format(image_format)
        contrast_range = tuple(contrast_range)
        saturation_range = tuple(saturation_range)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        def maybe(low: float, high: float, identity: float) -> float:
            return float(np.random.uniform(low, high)) if np.random.rand() < self.prob else identity

        brightness = maybe(-self.brightness_delta, self.brightness_delta, 0.0)
        contrast_first = bool(np.random.rand() < 0.5)
        contrast = maybe(*self.contrast_range, 1.0)
        saturation = maybe(*self.saturation_range, 1.0)
        hue = maybe(-self.hue_delta, self.hue_delta, 0.0)
        if brightness == 0 and contrast == 1 and saturation == 1 and hue == 0:
            return T.NoOpTransform()
        return PhotometricDistortTransform(
            brightness_delta=brightness,
            contrast=contrast,
            saturation=saturation,
            hue_delta=hue,
            contrast_first=contrast_first,
            image_format=self.image_format,
        )


class ExpandTransform(T.Transform):
    """Places the image on a larger canvas filled with a constant colour (SSD's "zoom out").

    The image's top-left corner goes to ``(x0, y0)`` on a ``(new_h, new_w)`` canvas; coordinates
    shift by ``(x0, y0)``. Unlike fvcore's ``PadTransform``, the fill may differ per channel (the
    pixel mean).

    Args:
        x0, y0: position of the image on the canvas.
        orig_w, orig_h: size of the input image.
        new_w, new_h: size of the canvas; at least ``x0 + orig_w`` and ``y0 + orig_h``.
        fill: canvas colour, one value or one per channel, in the images' channel order and
            0-255 scale (rounded for uint8 images).
        seg_fill: canvas value of segmentation maps.
    """

    def __init__(
        self,
        x0: int,
        y0: int,
        orig_w: int,
        orig_h: int,
        new_w: int,
        new_h: int,
        *,
        fill: Sequence[float] = (0.0,),
        seg_fill: int = 0,
    ):
        super().__init__()
        if not (0 <= x0 and 0 <= y0 and x0 + orig_w <= new_w and y0 + orig_h <= new_h):
            raise ValueError(
                f"image {orig_w}x{orig_h} at ({x0}, {y0}) does not fit a {new_w}x{new_h} canvas"
            )
        fill = tuple(float(v) for v in np.atleast_1d(fill))
        self._set_attributes(locals())

    def _paste(self, img: np.ndarray, fill) -> np.ndarray:
        if img.shape[:2] != (self.orig_h, self.orig_w):
            raise ValueError(f"expected a {self.orig_h}x{self.orig_w} image, got shape {img.shape}")
        fill = np.asarray(fill, dtype=np.float64)
        if img.dtype == np.uint8:
            fill = np.clip(np.round(fill), 0, 255)
        canvas = np.empty((self.new_h, self.new_w) + img.shape[2:], dtype=img.dtype)
        canvas[...] = fill.astype(img.dtype)
        canvas[self.y0 : self.y0 + self.orig_h, self.x0 : self.x0 + self.orig_w] = img
        return canvas

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 3 and len(self.fill) not in (1, img.shape[2]):
            raise ValueError(f"fill {self.fill} does not match an image of {img.shape[2]} channels")
        return self._paste(img, self.fill if img.ndim == 3 else self.fill[0])

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._paste(segmentation, self.seg_fill)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] += self.x0
        coords[:, 1] += self.y0
        return coords

    def inverse(self) -> T.Transform:
        return T.CropTransform(
            self.x0, self.y0, self.orig_w, self.orig_h, orig_w=self.new_w, orig_h=self.new_h
        )


class RandomExpand(T.Augmentation):
    """SSD's zoom out: with probability ``prob``, place the image at a random position on a
    canvas ``r`` times its height and width, ``r ~ U(1, max_ratio)``, filled with ``fill``.

    Zooming out makes objects small, which the min-IoU crop that follows cannot do (the paper
    reports +2-3 mAP from it, Sec. 3.6).

    Args:
        max_ratio: largest canvas-to-image side ratio (>= 1).
        fill: canvas colour (see :class:`ExpandTransform`); SSD uses the pixel mean, which
            becomes 0 after normalization.
        prob: probability of expanding.
    """

    def __init__(
        self, max_ratio: float = 4.0, *, fill: Sequence[float] = (0.0,), prob: float = 0.5
    ):
        super().__init__()
        if max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        fill = tuple(float(v) for v in np.atleast_1d(fill))
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if not np.random.rand() < self.prob:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        ratio = np.random.uniform(1.0, self.max_ratio)
        new_h, new_w = int(h * ratio), int(w * ratio)
        x0 = np.random.randint(new_w - w + 1)
        y0 = np.random.randint(new_h - h + 1)
        return ExpandTransform(x0, y0, w, h, new_w, new_h, fill=self.fill)


class RandomMinIoUCrop(T.Augmentation):
    """SSD's random crop: a crop that overlaps some object by at least a minimum IoU.

    A mode is drawn uniformly among "no crop" (if ``allow_no_crop``) and ``min_ious``. For a
    minimum IoU ``m``, up to ``num_trials`` crops are sampled, each side ``U(min_scale, 1)`` times
    the image's, rejected unless its aspect ratio ``w / h`` lies in ``aspect_range``; the first
    crop that contains the centre of some box, and overlaps one of the boxes whose centre it
    contains with IoU >= ``m``, is returned. If none does (or there are no boxes), the image is
    not cropped. ``m = 0`` is the paper's "randomly sample a patch": only the centre condition.

    Unlike ssd.pytorch and torchvision, which redraw the mode until a crop is found, the search
    is bounded: one mode, ``num_trials`` samples, else no crop. So a hard mode (0.9 with small
    objects) falls back to the whole image, where the references would pick another mode.

    The transform only says where to crop. Boxes whose centre lies outside the crop must be
    dropped by the caller, and the others clipped: :class:`condconv_det.data.SSDDatasetMapper`
    keeps an object iff the centre of its transformed box lies in the output image, which is the
    same rule (the transforms after the crop map the crop onto the whole image).

    Args:
        min_ious: the minimum-IoU modes; 0 means "any crop with a box centre".
        allow_no_crop: whether "no crop" (the whole image) is one of the modes.
        min_scale: smallest crop side, as a fraction of the image side.
        aspect_range: ``(low, high)`` bounds of the crop's width / height.
        num_trials: crops sampled per call before giving up.
    """

    def __init__(
        self,
        min_ious: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
        *,
        allow_no_crop: bool = True,
        min_scale: float = 0.3,
        aspect_range: Tuple[float, float] = (0.5, 2.0),
        num_trials: int = 50,
    ):
        super().__init__()
        min_ious = tuple(float(m) for m in min_ious)
        aspect_range = tuple(aspect_range)
        if not min_ious and not allow_no_crop:
            raise ValueError("RandomMinIoUCrop needs at least one mode")
        self._init(locals())

    def get_transform(self, image: np.ndarray, boxes: Optional[np.ndarray]) -> T.Transform:
        """
        Args:
            image: ``(H, W, C)`` or ``(H, W)`` image.
            boxes: ``(N, 4)`` XYXY absolute boxes of the objects, or None.

        Returns:
            a ``CropTransform``, or a ``NoOpTransform`` for "no crop".
        """
        modes = ((None,) if self.allow_no_crop else ()) + self.min_ious
        min_iou = modes[np.random.randint(len(modes))]
        if min_iou is None or boxes is None or len(boxes) == 0:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for _ in range(self.num_trials):
            crop = self._sample_crop(h, w)
            if crop is not None and crop_satisfies_min_iou(crop, boxes, min_iou):
                x0, y0, cw, ch = crop
                return T.CropTransform(x0, y0, cw, ch, orig_w=w, orig_h=h)
        return T.NoOpTransform()

    def _sample_crop(self, h: int, w: int) -> Optional[Tuple[int, int, int, int]]:
        """One random crop ``(x0, y0, w, h)`` within an ``h x w`` image, or None when its
        aspect ratio is out of range (a failed trial, as in ssd.pytorch)."""
        cw = int(np.random.uniform(self.min_scale, 1.0) * w)
        ch = int(np.random.uniform(self.min_scale, 1.0) * h)
        if cw < 1 or ch < 1 or not self.aspect_range[0] <= cw / ch <= self.aspect_range[1]:
            return None
        x0 = np.random.randint(w - cw + 1)
        y0 = np.random.randint(h - ch + 1)
        return int(x0), int(y0), cw, ch


def box_centers_in_crop(boxes: np.ndarray, crop: Tuple[int, int, int, int]) -> np.ndarray:
    """Which boxes have their centre strictly inside the crop.

    Args:
        boxes: ``(N, 4)`` XYXY absolute boxes.
        crop: ``(x0, y0, w, h)``.

    Returns:
        bool array ``(N,)``.
    """
    x0, y0, w, h = crop
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (x0 < cx) & (cx < x0 + w) & (y0 < cy) & (cy < y0 + h)


def crop_satisfies_min_iou(
    crop: Tuple[int, int, int, int], boxes: np.ndarray, min_iou: float
) -> bool:
    """SSD's crop condition: some box has its centre in the crop and IoU >= ``min_iou`` with it.

    Args:
        crop: ``(x0, y0, w, h)``.
        boxes: ``(N, 4)`` XYXY absolute boxes.
        min_iou: the minimum IoU.
    """
    inside = boxes[box_centers_in_crop(boxes, crop)]
    if len(inside) == 0:
        return False
    x0, y0, w, h = crop
    iw = np.clip(np.minimum(inside[:, 2], x0 + w) - np.maximum(inside[:, 0], x0), 0, None)
    ih = np.clip(np.minimum(inside[:, 3], y0 + h) - np.maximum(inside[:, 1], y0), 0, None)
    inter = iw * ih
    areas = (inside[:, 2] - inside[:, 0]) * (inside[:, 3] - inside[:, 1])
    iou = inter / np.maximum(areas + w * h - inter, np.finfo(np.float64).tiny)
    return bool(iou.max() >= min_iou)

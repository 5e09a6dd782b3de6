"""The bundled "shapes" detection dataset: COCO-format, made on first use, nothing downloaded.

Every image is rendered from a seed, so the same parameters always give the same dataset
(byte-identical JSON and identical pixels, on a given platform and numpy version). An image
holds 2 to 8 objects of five classes (:data:`SHAPES_CLASSES`) that differ in *shape*: each
object's colour is drawn from one distribution for all classes, so colour alone cannot tell the
class. Objects vary in size (10 to 56 px on 128 x 128 images: COCO's "small" and "medium"),
rotation (shapes without full rotational symmetry), position and shading, and may overlap, but
an object keeps at least :data:`MIN_VISIBLE_FRACTION` of its pixels visible so its box stays
meaningful. The background is a noisy gradient with soft blobs, lines and scribbles that are not
objects; pixel noise covers everything.

Layout (like detectron2's ``datasets/coco``)::

    <root>/annotations/instances_train.json  <root>/train/000001.png ...
    <root>/annotations/instances_val.json    <root>/val/000001.png ...
    <root>/shapes_dataset.json               generator version + parameters, written last

A box is the tight box of the object's *visible* pixels (COCO's XYWH in absolute pixels), the
segmentation is the visible mask as COCO RLE (exact, and rings have holes, which polygons cannot
express; to train masks on it set ``INPUT.MASK_FORMAT = "bitmask"``), ``area`` is the mask's
pixel count. Images are PNG: lossless, so annotations describe the stored pixels exactly;
JPEG's 8 x 8 blocks and chroma subsampling would smear the 8 px objects and the object edges the
boxes are measured on.
"""

import colorsys
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUNDS",
    "CONTENTS",
    "DIGITS_CLASSES",
    "SHAPES_CLASSES",
    "dataset_classes",
    "generate_shapes_dataset",
    "shapes_dataset_paths",
]

logger = logging.getLogger(__name__)

SHAPES_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
"""Class names; the COCO category id of ``SHAPES_CLASSES[i]`` is ``i + 1``."""

DIGITS_CLASSES: Tuple[str, ...] = tuple(str(d) for d in range(10))
"""Class names of the "digits" content: handwritten digits, category id ``d + 1`` for digit d."""

CONTENTS = ("shapes", "digits")
"""What the objects are: "shapes" (:data:`SHAPES_CLASSES`, drawn geometrically) or "digits"
(handwritten digits of scikit-learn's bundled UCI digits set, 1797 scans of 8 x 8 pixels by 43
writers, scaled up: a second kind of object for the same pipeline). Digit scans are split between
the training and validation images (every fifth scan is validation-only), so validation
digits were never seen in training."""


BACKGROUNDS = ("cluttered", "plain")
"""The images' backgrounds: "cluttered" (a noisy colour gradient with soft blobs, lines and
scribbles, different in every image) or "plain" (one mid-grey for every image, under the same
pixel noise): with "plain", what a global average pool sees differs between images only by
their objects."""


def dataset_classes(content: str) -> Tuple[str, ...]:
    """The class names of a dataset of ``content`` (one of :data:`CONTENTS`)."""
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
    return SHAPES_CLASSES if content == "shapes" else DIGITS_CLASSES


GENERATOR_VERSION = 1
"""Bump on any change to the rendering: a dataset made by another version is regenerated."""

MIN_VISIBLE_FRACTION = 0.6
"""An object placed later may hide at most 40% of an earlier object's pixels."""

_SPLITS = ("train", "val")
_MARKER = "shapes_dataset.json"
# Half the side of the square window a shape is rendered in, per unit of size; the largest
# circumradius per unit of size is the square's, 1 / sqrt(2).
_HALF_EXTENT = 0.75
# Squares turn only a little: a square turned by 45 degrees is a diamond, whose box is half
# empty, like a triangle's.
_SQUARE_MAX_ANGLE = np.deg2rad(10.0)
# Minimum RGB distance between an object and what surrounds it, so every object is visible.
_MIN_CONTRAST = 70.0
_PLACEMENT_TRIES = 30
_COLOUR_TRIES = 20


class _Instance(NamedTuple):
    category: int  # index into SHAPES_CLASSES
    mask: np.ndarray  # (H, W) bool, the visible pixels
    colour: Tuple[float, float, float]  # RGB before shading and noise
    drawn_area: int  # pixels when drawn, before later objects hid some


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return 255.0 * np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32)


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a ``(h, w, C)`` grid to ``(height, width, C)``."""
    # PIL's resampling: fast, and single-threaded C, so the same on every run (BLAS need not be).
    channels = [
        np.asarray(
            Image.fromarray(grid[..., c].astype(np.float32), "F").resize(
                (width, height), Image.BILINEAR
            )
        )
        for c in range(grid.shape[2])
    ]
    return np.stack(channels, axis=-1)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A cluttered ``(H, W, 3)`` float background: gradient, texture, soft blobs, lines."""
    # Low-saturation ends keep most objects (saturation >= 0.25) distinguishable from it.
    start, end = (_rgb(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.2, 0.9)) for _ in "ab")
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.cos(theta) * xs / width + np.sin(theta) * ys / height
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]
    image = start * (1 - t) + end * t
    cells = int(rng.integers(3, 9))
    image += rng.uniform(8, 30) * _upsample(rng.normal(size=(cells, cells, 3)), height, width)
    # Soft blobs have no edge, so they cannot pass for one of the classes.
    for _ in range(int(rng.integers(0, 5))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(3, 16)
        strength = rng.uniform(0.3, 0.7)
        colour = _rgb(rng.random(), rng.uniform(0, 1), rng.uniform(0.2, 1))
        # Within 4 sigma: farther out the blob would change pixel values by less than 0.1.
        y0, y1 = max(int(cy - 4 * sigma), 0), min(int(cy + 4 * sigma) + 1, height)
        x0, x1 = max(int(cx - 4 * sigma), 0), min(int(cx + 4 * sigma) + 1, width)
        dy, dx = (ys[y0:y1, x0:x1] - cy) ** 2, (xs[y0:y1, x0:x1] - cx) ** 2
        weight = (strength * np.exp(-(dy + dx) / (2 * sigma**2)))[..., None]
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - weight) + colour * weight
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 6))):  # straight lines across the image
        points = [tuple(p) for p in rng.uniform(0, (width, height), size=(2, 2))]
        draw.line(
            points,
            fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
            width=int(rng.integers(1, 3)),
        )
    for _ in range(int(rng.integers(0, 3))):  # open scribbles: random walks
        steps = rng.normal(0, 12, size=(int(rng.integers(3, 8)), 2)).cumsum(axis=0)
        points = [tuple(p) for p in steps + rng.uniform(0, (width, height))]
        draw.line(
            points,
            fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
            width=int(rng.integers(1, 3)),
        )
    return np.asarray(canvas, np.float32)


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule: whether each point ``(u, v)`` lies inside the polygon ``(K, 2)``."""
    inside = np.zeros(u.shape, bool)
    for (u1, v1), (u2, v2) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if v1 == v2:
            continue  # a horizontal edge never crosses the horizontal ray
        crosses = (v1 > v) != (v2 > v)
        inside ^= crosses & (u < (u2 - u1) * (v - v1) / (v2 - v1) + u1)
    return inside


def _regular_polygon(radii: Sequence[float], start: float) -> np.ndarray:
    """Vertices at equal angular steps from ``start``, at the given radii in turn."""
    angles = start + 2 * np.pi * np.arange(len(radii)) / len(radii)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.asarray(radii)[:, None]


def _shape_mask(rng: np.random.Generator, category: int, size: float) -> np.ndarray:
    """The mask of one shape of ``size`` px (the unrotated shape's width), cropped to its pixels.

    A pixel belongs to the shape when its centre does: no anti-aliasing, so every pixel has
    exactly one owner and the annotations are exact.
    """
    name = SHAPES_CLASSES[category]
    half = int(np.ceil(size * _HALF_EXTENT)) + 1
    # A random sub-pixel centre: shapes of one size do not all fall on the grid the same way.
    cy, cx = half + rng.random(2)
    coords = np.arange(2 * half + 1) + 0.5
    y, x = coords[:, None] - cy, coords[None, :] - cx
    r = size / 2
    if name == "square":
        angle = rng.uniform(-_SQUARE_MAX_ANGLE, _SQUARE_MAX_ANGLE)
    elif name == "triangle":
        angle = rng.uniform(0, 2 * np.pi / 3)
    elif name == "star":
        angle = rng.uniform(0, 2 * np.pi / 5)
    else:  # circle, ring: rotation changes nothing
        angle = 0.0
    # Sample the shape in its own frame: rotating the grid by -angle turns the shape by +angle.
    u = np.cos(angle) * x + np.sin(angle) * y
    v = -np.sin(angle) * x + np.cos(angle) * y
    if name == "circle":
        mask = u**2 + v**2 <= r**2
    elif name == "ring":
        inner = r * rng.uniform(0.45, 0.6)
        mask = (u**2 + v**2 <= r**2) & (u**2 + v**2 >= inner**2)
    elif name == "square":
        mask = np.maximum(np.abs(u), np.abs(v)) <= r
    elif name == "triangle":  # equilateral with side `size`, pointing up
        mask = _inside_polygon(u, v, _regular_polygon([size / np.sqrt(3)] * 3, -np.pi / 2))
    else:  # five-pointed star
        radii = [r, r * rng.uniform(0.4, 0.5)] * 5
        mask = _inside_polygon(u, v, _regular_polygon(radii, -np.pi / 2))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


_DIGITS_CACHE: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}


def _digit_scans(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(images (N, 8, 8) in [0, 1], labels (N,))`` of the scans that ``split`` draws from."""
    if split not in _DIGITS_CACHE:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError(
                "The digits dataset draws its digits from scikit-learn's bundled digits: "
                "pip install scikit-learn (nothing is downloaded)."
            ) from e
        digits = load_digits()
        index = np.arange(len(digits.target))
        keep = index % 5 == 0 if split == "val" else index % 5 != 0
        images = digits.images[keep].astype(np.float32) / 16.0
        _DIGITS_CACHE[split] = (images, digits.target[keep].astype(np.int64))
    return _DIGITS_CACHE[split]


def _digit_mask(rng: np.random.Generator, category: int, size: float, split: str) -> np.ndarray:
    """The mask of a random scan of digit ``category`` scaled to ``size`` px, cropped to it."""
    images, labels = _digit_scans(split)
    scan = images[rng.choice(np.flatnonzero(labels == category))]
    side = max(int(round(size)), 8)
    ink = np.asarray(Image.fromarray(scan, "F").resize((side, side), Image.BILINEAR))
    mask = ink > 0.4
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel (4-neighbourhood), padded by one pixel on every side."""
    out = np.pad(mask, 1)
    grown = out.copy()
    grown[1:] |= out[:-1]
    grown[:-1] |= out[1:]
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def _pick_colour(
    rng: np.random.Generator, neighbours: List[np.ndarray]
) -> Tuple[float, float, float]:
    """An object colour far enough from each colour in ``neighbours`` (best of some tries).

    The draw does not depend on the class: colour must not give the class away.
    """
    best, best_distance = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = _rgb(rng.random(), rng.uniform(0.25, 1), rng.uniform(0.3, 1))
        distance = min((float(np.linalg.norm(colour - n)) for n in neighbours), default=np.inf)
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= _MIN_CONTRAST:
            break
    return tuple(float(c) for c in best)


def _render_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    objects_per_image: Tuple[int, int],
    object_size: Tuple[float, float],
    content: str = "shapes",
    split: str = "train",
    background: str = "cluttered",
) -> Tuple[np.ndarray, List[_Instance]]:
    """Renders one image and its objects.

    Returns:
        the ``(H, W, 3)`` uint8 RGB image and its visible objects in painting order.
    """
    if background == "plain":
        image = np.full((height, width, 3), 128.0, np.float32)
    else:
        image = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)  # which object each pixel shows
    full_area: List[int] = []
    visible_area: List[int] = []
    categories: List[int] = []
    colours: List[Tuple[float, float, float]] = []
    for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
        for _ in range(_PLACEMENT_TRIES):
            category = int(rng.integers(len(dataset_classes(content))))
            if content == "digits":
                mask = _digit_mask(rng, category, rng.uniform(*object_size), split)
            else:
                mask = _shape_mask(rng, category, rng.uniform(*object_size))
            mh, mw = mask.shape
            y0, x0 = int(rng.integers(0, height - mh + 1)), int(rng.integers(0, width - mw + 1))
            window = owner[y0 : y0 + mh, x0 : x0 + mw]
            hidden = np.bincount(window[mask & (window >= 0)], minlength=len(full_area))
            remaining = np.asarray(visible_area, np.int64) - hidden
            if np.all(remaining >= MIN_VISIBLE_FRACTION * np.asarray(full_area)):
                break
        else:
            continue  # the image is too crowded for another object
        # Contrast with the background under the object and with every object it touches.
        grown = _dilate(mask)
        ys, xs = np.nonzero(grown)
        ys, xs = ys + y0 - 1, xs + x0 - 1
        keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        touched = set(owner[ys[keep], xs[keep]].tolist()) - {-1}
        neighbours = [image[y0 : y0 + mh, x0 : x0 + mw][mask].mean(axis=0)]
        neighbours += [np.asarray(colours[j], np.float32) for j in sorted(touched)]
        colour = _pick_colour(rng, neighbours)
        # Mild linear shading across the object, so objects are not perfectly flat.
        direction = rng.normal(size=2)
        gy, gx = np.mgrid[0:mh, 0:mw]
        shade = rng.uniform(0, 30) * ((gy - mh / 2) * direction[0] + (gx - mw / 2) * direction[1])
        shade /= max(mh, mw) * max(float(np.linalg.norm(direction)), 1e-6)
        patch = image[y0 : y0 + mh, x0 : x0 + mw]
        patch[mask] = np.asarray(colour, np.float32) + shade[mask][:, None]
        for j, count in enumerate(hidden.tolist()):
            visible_area[j] -= count
        window[mask] = len(full_area)
        area = int(mask.sum())
        full_area.append(area)
        visible_area.append(area)
        categories.append(category)
        colours.append(colour)
    image += rng.uniform(2, 8) * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    instances = [
        _Instance(categories[k], owner == k, colours[k], full_area[k])
        for k in range(len(full_area))
        if visible_area[k] > 0  # fully hidden objects are not annotated
    ]
    return image, instances


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: images do not depend on each other or on the split sizes."""
    return np.random.default_rng([seed, _SPLITS.index(split), index])


def _annotation(instance: _Instance, annotation_id: int, image_id: int) -> Dict:
    rows = np.flatnonzero(instance.mask.any(axis=1))
    cols = np.flatnonzero(instance.mask.any(axis=0))
    rle = mask_util.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": instance.category + 1,
        # COCO's XYWH: a box from pixel column c0 to c1 (inclusive) is [c0, c1 + 1).
        "bbox": [
            int(cols[0]),
            int(rows[0]),
            int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1),
        ],
        "area": int(instance.mask.sum()),
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        "iscrowd": 0,
    }


def _write_split(
    directory: str, split: str, count: int, params: Dict, progress_bar
) -> Dict[str, int]:
    height, width = params["image_size"]
    content = params.get("content", "shapes")
    os.makedirs(os.path.join(directory, split))
    images, annotations = [], []
    for index in range(count):
        image, instances = _render_image(
            _image_rng(params["seed"], split, index),
            height,
            width,
            tuple(params["objects_per_image"]),
            tuple(params["object_size"]),
            params.get("content", "shapes"),
            split,
            params.get("background", "cluttered"),
        )
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(image).save(os.path.join(directory, split, file_name), compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for instance in instances:
            annotations.append(_annotation(instance, len(annotations) + 1, image_id))
        progress_bar.update(1)
    coco = {
        "info": {
            "description": f"condconv_det synthetic {content}",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": content}
            for i, name in enumerate(dataset_classes(content))
        ],
    }
    with open(os.path.join(directory, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    return {"images": len(images), "annotations": len(annotations)}


def shapes_dataset_paths(root: Union[str, os.PathLike]) -> Dict[str, str]:
    """The paths of the dataset under ``root`` (whether or not it exists yet).

    Returns:
        ``{"root", "train_json", "train_images", "val_json", "val_images"}`` -> path.
    """
    root = os.fspath(root)
    paths = {"root": root}
    for split in _SPLITS:
        paths[f"{split}_json"] = os.path.join(root, "annotations", f"instances_{split}.json")
        paths[f"{split}_images"] = os.path.join(root, split)
    return paths


def _read_marker(root: str) -> Optional[Dict]:
    try:
        with open(os.path.join(root, _MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_complete(root: str, params: Dict) -> bool:
    """Whether ``root`` holds a whole dataset made by this generator with ``params``."""
    marker = _read_marker(root)
    if marker is None or marker.get("version") != GENERATOR_VERSION:
        return False
    if marker.get("params") != params:
        return False
    paths = shapes_dataset_paths(root)
    for split, count in (("train", params["num_train"]), ("val", params["num_val"])):
        if not os.path.isfile(paths[f"{split}_json"]):
            return False
        images = paths[f"{split}_images"]
        if not os.path.isdir(images) or len(os.listdir(images)) != count:
            return False
    return True


def _check_replaceable(root: str) -> None:
    """Refuses to replace a directory that this generator did not make."""
    if os.path.isdir(root) and os.listdir(root) and _read_marker(root) is None:
        raise FileExistsError(
            f"{root} exists and is not a shapes dataset (it has no {_MARKER}); refusing to "
            "overwrite it. Remove it, or pass another root (the default is "
            "$DETECTRON2_DATASETS/condconv_shapes)."
        )


def _remove_stale_temporaries(parent: str, name: str, max_age_s: float = 3600.0) -> None:
    # A killed run cannot clean up after itself; an old temporary is not another live run's.
    now = time.time()
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(f".{name}.") and os.path.isdir(path):
            try:
                if now - os.path.getmtime(path) > max_age_s:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _normalize_params(
    num_train: int,
    num_val: int,
    image_size: Union[int, Tuple[int, int]],
    seed: int,
    objects_per_image: Tuple[int, int],
    object_size: Tuple[float, float],
    content: str = "shapes",
    background: str = "cluttered",
) -> Dict:
    dataset_classes(content)  # checks it
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    lo, hi = objects_per_image
    smallest, largest = object_size
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")
    if min(height, width) < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    if not 1 <= lo <= hi:
        raise ValueError(
            f"objects_per_image must be (lo, hi) with 1 <= lo <= hi, got {objects_per_image}"
        )
    if not 4 <= smallest <= largest <= 0.7 * min(height, width):
        raise ValueError(
            "object_size must be (lo, hi) with 4 <= lo <= hi <= 0.7 * the image's shorter side, "
            f"got {object_size}"
        )
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    # The form written to the marker (JSON has lists, not tuples), so it compares equal on reload.
    # "content" only when not the original "shapes", so that shapes datasets made before it
    # existed are still recognised.
    extra = {} if content == "shapes" else {"content": content}
    if background != "cluttered":
        extra["background"] = background
    return {
        **extra,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [int(height), int(width)],
        "seed": seed,
        "objects_per_image": [int(lo), int(hi)],
        "object_size": [float(smallest), float(largest)],
    }


def generate_shapes_dataset(
    root: Union[str, os.PathLike],
    *,
    num_train: int = 800,
    num_val: int = 100,
    image_size: Union[int, Tuple[int, int]] = 128,
    seed: int = 0,
    objects_per_image: Tuple[int, int] = (2, 8),
    object_size: Tuple[float, float] = (10, 56),
    content: str = "shapes",
    background: str = "cluttered",
    progress: bool = True,
) -> Dict[str, str]:
    """Makes the shapes dataset under ``root`` unless it is already there with these parameters.

    Idempotent and atomic: the dataset is written to a temporary sibling of ``root`` and renamed
    into place once complete, with a marker holding the generator version and the parameters.
    A complete dataset with the same marker is reused; one with another marker (other
    parameters, older generator) is replaced; an interrupted run leaves ``root`` as it was.
    Concurrent runs (e.g. several training processes) each write their own temporary copy and
    the first to finish wins. The defaults take ~10 s on one CPU core and ~30 MB of disk; they
    are sized so that a small detector trains many epochs in minutes on 2 CPU cores.

    Args:
        root: the dataset directory, e.g. ``$DETECTRON2_DATASETS/condconv_shapes``. Must be
            missing, empty, or a shapes dataset: any other directory is never overwritten.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: ``S`` for ``S x S`` images, or ``(height, width)``.
        seed: the seed of the whole dataset.
        objects_per_image: ``(lo, hi)``, inclusive range of objects tried per image (a crowded
            image may hold fewer).
        object_size: ``(lo, hi)``, the range of the unrotated shapes' widths in pixels, drawn
            uniformly (digits: the side of the scaled scan).
        content: one of :data:`CONTENTS`, the kind of objects.
        background: one of :data:`BACKGROUNDS`.
        progress: show a progress bar (tqdm, on stderr) while generating.

    Returns:
        paths as in :func:`shapes_dataset_paths`.

    Raises:
        FileExistsError: ``root`` is a non-empty directory that is not a shapes dataset.
        ValueError: invalid parameters.
    """
    root = os.path.abspath(os.fspath(root))
    params = _normalize_params(
        num_train, num_val, image_size, seed, objects_per_image, object_size, content, background
    )
    paths = shapes_dataset_paths(root)
    if _is_complete(root, params):
        return paths
    _check_replaceable(root)
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temporaries(parent, name)
    logger.info(f"Generating the shapes dataset in {root} ({params}) ...")
    start = time.perf_counter()

    from tqdm import tqdm  # a dependency of fvcore, so of detectron2

    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        counts = {}
        total = params["num_train"] + params["num_val"]
        with tqdm(
            total=total, desc=f"{content} dataset", unit="img", disable=not progress, mininterval=1
        ) as bar:
            for split in _SPLITS:
                counts[split] = _write_split(tmp, split, params[f"num_{split}"], params, bar)
        marker = {"generator": __name__, "version": GENERATOR_VERSION, "params": params}
        marker["counts"] = counts
        with open(os.path.join(tmp, _MARKER), "w") as f:
            json.dump(marker, f, indent=2, sort_keys=True)
        _move_into_place(tmp, root, params)
    except BaseException:  # KeyboardInterrupt too: never leave a temporary copy behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        f"Generated the shapes dataset in {time.perf_counter() - start:.1f} s: "
        + ", ".join(
            f"{s}: {c['images']} images, {c['annotations']} objects" for s, c in counts.items()
        )
    )
    return paths


def _move_into_place(tmp: str, root: str, params: Dict) -> None:
    """Renames the finished ``tmp`` to ``root``, replacing an old dataset there."""
    old = None
    if os.path.isdir(root):
        _check_replaceable(root)  # again: it may have appeared while we were generating
        if not os.listdir(root):
            os.rmdir(root)
        else:
            # Move the old dataset aside rather than delete it first: renames are atomic, and
            # between them a reader sees no dataset, never half of one.
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(root)}.old-", dir=os.path.dirname(root)
            )
            os.rename(root, os.path.join(old, "dataset"))
    try:
        os.rename(tmp, root)
    except OSError:
        # Another process finished first: use its dataset if it is the one we wanted.
        if not _is_complete(root, params):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

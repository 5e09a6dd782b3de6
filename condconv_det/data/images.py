"""Image files: reading them for the model whatever their bit depth, finding them among paths
and glob patterns, and writing drawn ones.

detectron2's ``read_image`` converts with PIL's ``Image.convert``, which clips a 16-bit
grayscale image (PIL mode "I" or "I;16") to 0..255: everything above 255 becomes white, and the
image turns black and white. :func:`read_image` scales such images to 8 bits first; the SSD
mapper and the tools read images through it.
"""

import glob
import os
from typing import List, Sequence, Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image

from condconv_det.file_io import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_8bit_image",
    "expand_image_inputs",
    "image_output_names",
    "read_image",
    "write_image",
]

# What a directory or a glob pattern contributes (:func:`expand_image_inputs`); a file named
# explicitly is tried whatever its extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# PIL's modes of one-channel images with more than 8 bits: 32-bit integers ("I", which 16-bit
# PNGs open as), 16-bit integers ("I;16" and its byte orders, 16-bit TIFFs) and floats ("F").
_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_FLOAT_MODES = ("F",)

# What the messages about other images say is read.
_SUPPORTED = (
    "8-bit images of any PIL mode, 16-bit grayscale, RGB and RGBA (scaled to 0..255), and "
    "32-bit float grayscale with values in 0..1"
)


def _to_8bit(image: Image.Image) -> Image.Image:
    """``image`` as a mode "L" image if it has more than 8 bits per pixel, else itself."""
    if image.mode not in _INTEGER_MODES + _FLOAT_MODES:
        return image  # 8 bits per channel; PIL already reads 16-bit RGB(A) PNGs as 8-bit
    values = np.asarray(image)
    if values.size and image.mode in _FLOAT_MODES:
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(low) and np.isfinite(high) and 0.0 <= low and high <= 1.0):
            raise ValueError(
                f"a float image (PIL mode F) with values from {low:g} to {high:g}; float images "
                "are read as 0..1 intensities. Save it as an 8- or 16-bit image, or scale it to "
                f"0..1 (read are: {_SUPPORTED})"
            )
        return Image.fromarray(np.round(values * 255).astype(np.uint8), mode="L")
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"an integer image (PIL mode {image.mode}) with values from {values.min()} to "
            f"{values.max()}, beyond 16 bits. Save it as an 8- or 16-bit image (read are: "
            f"{_SUPPORTED})"
        )
    # The high byte: what PIL itself keeps of a 16-bit RGB PNG, so that a grayscale image gives
    # the same pixels whether it is stored with one channel or three.
    return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), mode="L")


def read_image(file_name: str, image_format: str) -> np.ndarray:
    """The image in ``file_name`` as the model takes it, EXIF orientation applied.

    As detectron2's ``read_image``, but images of more than 8 bits are scaled to 0..255 rather
    than clipped: 16-bit images by their high byte (``v >> 8``, so 0..65535 becomes 0..255),
    float images from 0..1. Then the image is converted to ``image_format`` as detectron2 does
    (a grayscale file becomes 3 channels for "RGB" and "BGR").

    Args:
        file_name: the image file (a path PathManager opens).
        image_format: ``INPUT.FORMAT``: "RGB", "BGR", "L", "YUV-BT.601" or another PIL mode.

    Returns:
        ``(H, W, C)``: uint8 in 0..255, float for "YUV-BT.601" (as detectron2 gives it).

    Raises:
        OSError: naming the file, if it is missing, not an image PIL reads, or of a depth that
            is not read (integers beyond 16 bits, floats outside 0..1).
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            # detectron2's own EXIF handling, so that images turn as its read_image turns them.
            image = utils._apply_exif_orientation(image)
            image = _to_8bit(image)
            array = utils.convert_PIL_to_numpy(image, image_format)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        raise OSError(
            f"cannot read image {file_name!r} as {image_format} ({type(e).__name__}: {e})"
        ) from e
    return array[:, :, None] if array.ndim == 2 else array


def check_8bit_image(file_name: str, reader: str) -> None:
    """Refuses, naming the file, an image of more than 8 bits per channel that ``reader`` (a
    mapper that reads with detectron2's ``read_image``, which clips them) would spoil. Reads
    the file's header only."""
    with PathManager.open(file_name, "rb") as f:
        mode = Image.open(f).mode
    if mode in _INTEGER_MODES + _FLOAT_MODES:
        raise ValueError(
            f"image {file_name!r} has more than 8 bits per pixel (PIL mode {mode}), which "
            f"{reader} clips to black and white. Convert the dataset's images to 8 bits, or "
            "train an SSD config, whose mapper scales them."
        )


def expand_image_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[str], List[str]]:
    """Image files named by ``inputs``, in argument order, each directory's and pattern's
    matches sorted, duplicates dropped.

    Args:
        inputs: file paths (taken whatever their extension), directories (their files ending
            in one of :data:`IMAGE_EXTENSIONS`, not recursive) and glob patterns (``**``
            recurses; matches with those extensions).

    Returns:
        ``(files, missing, empty)``: the image files; the inputs that are neither a file, a
        directory nor a glob pattern (typos); the directories and patterns without images.
    """
    files: List[str] = []
    missing: List[str] = []
    empty: List[str] = []
    for item in inputs:
        if os.path.isfile(item):
            found = [item]
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item))
            found = [p for p in found if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
        elif glob.has_magic(item):
            found = sorted(glob.glob(item, recursive=True))
            found = [p for p in found if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            missing.append(item)
            continue
        if not found:
            empty.append(item)
        files.extend(found)
    return list(dict.fromkeys(files)), missing, empty


def image_output_names(files: Sequence[str]) -> List[str]:
    """One output file name per input, for writing them all into one folder: its base name,
    made unique with ``-2``, ``-3``, ... when inputs from different folders share one; a file
    without an image extension gets ``.png`` (:func:`write_image` takes the format from the
    extension)."""
    names: List[str] = []
    taken = set()
    for path in files:
        stem, ext = os.path.splitext(os.path.basename(path))
        if ext.lower() not in IMAGE_EXTENSIONS:
            stem, ext = stem + ext, ".png"
        name, k = stem + ext, 1
        while name in taken:
            k += 1
            name = f"{stem}-{k}{ext}"
        taken.add(name)
        names.append(name)
    return names


def write_image(path: str, image: np.ndarray) -> None:
    """Writes ``image`` atomically (:func:`~condconv_det.file_io.atomic_write`: a kill leaves
    the old file or none, never a cut one), in the format of ``path``'s extension.

    Args:
        path: ends in an extension PIL writes (e.g. one of :data:`IMAGE_EXTENSIONS`).
        image: ``(H, W, 3)`` uint8 RGB, or what ``PIL.Image.fromarray`` takes.

    Raises:
        OSError: the file cannot be written.
        ValueError: an extension PIL does not know.
    """
    # PIL picks the format from the name, which the temporary file does not end in.
    extension = os.path.splitext(path)[1].lower()
    file_format = Image.registered_extensions().get(extension)
    if file_format is None:
        raise ValueError(f"{path!r}: PIL writes no image format with the extension {extension!r}")
    atomic_write(path, lambda f: Image.fromarray(image).save(f, file_format))

"""Reading image files for the model, whatever their bit depth.

detectron2's ``read_image`` converts with PIL's ``Image.convert``, which clips a 16-bit
grayscale image (PIL mode "I" or "I;16") to 0..255: everything above 255 becomes white, and the
image turns black and white. :func:`read_image` scales such images to 8 bits first; the SSD
mapper and the tools read images through it.
"""

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["read_image", "check_8bit_image"]

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

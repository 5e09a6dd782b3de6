"""condconv_det.data.images: read_image (8-bit files as detectron2 reads them, 16-bit and float
files scaled to 0..255, EXIF orientation, clear errors; and the SSD mapper reading through it);
image files found among paths, directories and patterns, named for one output folder, and
written whole or not at all."""

import os
import struct
import zlib

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import detection_utils
from PIL import Image

from condconv_det import add_condconv_config
from condconv_det.data import (
    SSDDatasetMapper,
    expand_image_inputs,
    image_output_names,
    read_image,
    write_image,
)

EXIF_ORIENTATION = 0x0112
ROTATE_270 = 6  # the EXIF orientation of a photo taken with the camera turned right


def gradient16(height: int = 4, width: int = 256) -> np.ndarray:
    """``(height, width)`` uint16 rows running from 0 to 65535."""
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    return np.tile(row, (height, 1))


def save_png16_rgb(path, array: np.ndarray) -> str:
    """Writes an ``(H, W, 3)`` uint16 array as a 16-bit RGB PNG (PIL cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    height, width, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, truecolour
    png = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png)
    return str(path)


@pytest.mark.parametrize("image_format", ["RGB", "BGR", "L"])
def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path, image_format):
    values = gradient16()
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I", "I;16")  # what PIL makes of a 16-bit PNG
    image = read_image(str(path), image_format)
    assert image.dtype == np.uint8 and image.shape == (4, 256, 1 if image_format == "L" else 3)
    row = image[0, :, 0]
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row.astype(int)) >= 0).all()  # monotonic
    assert len(np.unique(row)) == 256  # a gradient, not black and white
    np.testing.assert_array_equal(image, np.broadcast_to((values >> 8)[..., None], image.shape))


def test_16bit_tiff_and_mode_i16(tmp_path):
    values = gradient16()
    path = tmp_path / "gray16.tif"
    Image.fromarray(values, mode="I;16").save(path)
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(read_image(str(path), "L")[..., 0], values >> 8)


def test_16bit_rgb_png_gives_the_same_pixels_as_16bit_grayscale(tmp_path):
    values = gradient16()
    rgb = np.stack([values, 65535 - values, np.full_like(values, 100 * 257)], axis=-1)
    image = read_image(save_png16_rgb(tmp_path / "rgb16.png", rgb), "RGB")
    np.testing.assert_array_equal(image, rgb >> 8)
    gray_as_rgb = np.repeat(values[..., None], 3, axis=-1)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    np.testing.assert_array_equal(
        read_image(save_png16_rgb(tmp_path / "gray_rgb16.png", gray_as_rgb), "RGB"),
        read_image(str(tmp_path / "gray16.png"), "RGB"),
    )


def test_float_tiff_in_0_1_is_scaled(tmp_path):
    values = np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 256)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(read_image(str(path), "L")[0, :, 0], np.arange(256))


@pytest.mark.parametrize(
    "values, expected",
    [
        (np.full((4, 4), 2.0, np.float32), "values from 2 to 2"),
        (np.full((4, 4), np.nan, np.float32), "float images are read as 0..1"),
        (np.full((4, 4), 70000, np.int32), "beyond 16 bits"),
        (np.full((4, 4), -1, np.int32), "beyond 16 bits"),
    ],
)
def test_unsupported_depths_are_refused_naming_the_file(tmp_path, values, expected):
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(OSError) as info:
        read_image(str(path), "RGB")
    message = str(info.value)
    assert str(path) in message and expected in message and "16-bit grayscale" in message


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1"])
@pytest.mark.parametrize("image_format", ["RGB", "BGR", "L", "YUV-BT.601"])
def test_8bit_images_read_as_detectron2_reads_them(tmp_path, mode, image_format):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    path = str(tmp_path / "image.png")
    rgb.convert(mode).save(path)
    expected = detection_utils.read_image(path, format=image_format)
    got = read_image(path, image_format)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_exif_orientation_is_applied_as_detectron2_does(tmp_path):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_270
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png", exif=exif)
    expected = detection_utils.read_image(str(tmp_path / "photo.png"), format="RGB")
    assert expected.shape == (40, 30, 3)  # turned
    np.testing.assert_array_equal(read_image(str(tmp_path / "photo.png"), "RGB"), expected)
    # A 16-bit file turns the same way.
    Image.fromarray(gradient16(30, 40)).save(tmp_path / "gray16.png", exif=exif)
    turned = read_image(str(tmp_path / "gray16.png"), "L")[..., 0]
    np.testing.assert_array_equal(turned, np.rot90(gradient16(30, 40) >> 8, k=-1))


def test_unreadable_file_is_an_oserror_naming_it(tmp_path):
    for path, content in ((tmp_path / "missing.png", None), (tmp_path / "bad.png", b"no image")):
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(OSError, match="cannot read image") as info:
            read_image(str(path), "RGB")
        assert str(path) in str(info.value) and info.value.__cause__ is not None


def test_ssd_mapper_reads_16bit_images_scaled(tmp_path):
    """A 16-bit file and its 8-bit version (high bytes) give the model the same input."""
    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.SSD.SIZE = 64
    values = gradient16(48, 256)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    Image.fromarray((values >> 8).astype(np.uint8)).save(tmp_path / "gray8.png")
    mapper = SSDDatasetMapper(cfg, is_train=False)
    out16, out8 = (
        mapper({"file_name": str(tmp_path / name), "image_id": 0, "height": 48, "width": 256})
        for name in ("gray16.png", "gray8.png")
    )
    assert out16["image"].shape == (3, 64, 64)
    assert len(out16["image"].unique()) > 32  # the gradient survives, not only 0 and 255
    assert (out16["image"] == out8["image"]).all()


def test_detectron2s_mapper_refuses_a_16bit_image_by_name(tmp_path):
    # R-CNN and RetinaNet read through detectron2's DatasetMapper, which clips 16-bit images.
    from detectron2.data.detection_utils import read_image as d2_read_image

    from condconv_det.config import get_cfg as condconv_get_cfg
    from condconv_det.engine.trainer import build_mapper

    path = tmp_path / "gray16.png"
    Image.fromarray(gradient16(64, 64)).save(path)
    assert len(np.unique(d2_read_image(str(path), "RGB"))) <= 2  # what it would train on
    cfg = condconv_get_cfg()
    configs = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    cfg.merge_from_file(
        os.path.join(configs, "COCO-Detection", "retinanet_condconv_R_50_FPN_1x.yaml")
    )
    mapper = build_mapper(cfg, is_train=False)
    record = {"file_name": str(path), "image_id": 1, "height": 64, "width": 64}
    with pytest.raises(ValueError) as info:
        mapper(record)
    assert str(path) in str(info.value) and "more than 8 bits" in str(info.value)
    Image.fromarray((gradient16(64, 64) >> 8).astype(np.uint8)).save(tmp_path / "gray8.png")
    mapper({**record, "file_name": str(tmp_path / "gray8.png")})  # 8-bit images map as before


def test_inputs_expand_to_image_files_in_order_without_duplicates(tmp_path):
    folder, nested = tmp_path / "images", tmp_path / "images" / "nested"
    nested.mkdir(parents=True)
    for path in (folder / "b.PNG", folder / "a.jpg", nested / "c.png", tmp_path / "photo.raw"):
        path.write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    inputs = [
        str(tmp_path / "photo.raw"),  # named alone: taken whatever its extension
        str(folder),  # its image files, sorted, not recursive
        str(folder / "**" / "*.png"),  # ** recurses; b.PNG again is dropped
        str(tmp_path / "empty"),
        str(tmp_path / "*.gif"),
        str(tmp_path / "typo.jpg"),
    ]
    files, missing, empty = expand_image_inputs(inputs)
    assert files == [
        str(tmp_path / "photo.raw"),
        str(folder / "a.jpg"),
        str(folder / "b.PNG"),
        str(nested / "c.png"),
    ]
    assert missing == [str(tmp_path / "typo.jpg")]
    assert empty == [str(tmp_path / "empty"), str(tmp_path / "*.gif")]


def test_output_names_are_unique_and_writable():
    files = ["x/a.png", "y/a.png", "z/a.png", "x/b.JPG", "x/scan.raw", "y/scan.raw.png"]
    assert image_output_names(files) == [
        "a.png", "a-2.png", "a-3.png", "b.JPG", "scan.raw.png", "scan.raw-2.png"
    ]  # fmt: skip


def test_write_image_takes_the_format_from_the_name_and_is_atomic(tmp_path, monkeypatch):
    image = np.zeros((12, 20, 3), dtype=np.uint8)
    image[:, :10] = (255, 0, 0)
    write_image(str(tmp_path / "out.JPG"), image)
    with Image.open(tmp_path / "out.JPG") as written:
        assert written.format == "JPEG" and written.size == (20, 12)
    write_image(str(tmp_path / "out.png"), image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), image)
    with pytest.raises(ValueError, match="no image format with the extension '.xyz'"):
        write_image(str(tmp_path / "out.xyz"), image)

    def save_cut_short(self, fp, format=None, **params):
        fp.write(b"\x89PNG\r\n\x1a\n cut")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_cut_short)
    with pytest.raises(OSError, match="No space left"):
        write_image(str(tmp_path / "out.png"), np.zeros((5, 5, 3), dtype=np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["out.JPG", "out.png"]  # no temporary file left
    monkeypatch.undo()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), image)  # the old file

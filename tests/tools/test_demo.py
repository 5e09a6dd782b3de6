"""tools/demo.py: one drawn image per input at its size, the threshold, bad inputs. The predictor
and the drawing: tests/engine/test_predictor.py, tests/test_visualization.py."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from tests.tools import load_tool

pytest.importorskip("cv2", reason="detectron2's Visualizer needs OpenCV (opencv-python-headless)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "shapes", "ssd_condconv_MNv1.yaml")
# fmt: off
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.CONDCONV.NUM_EXPERTS", "2",
    "MODEL.MOBILENET.WIDTH_MULT", "0.25",
    "INPUT.SSD.SIZE", "64",
]
# fmt: on

demo = load_tool("demo")


@pytest.fixture
def demo_log(caplog):
    """The demo's log records (detectron2's setup_logger stops them from reaching the root)."""
    logger = logging.getLogger("condconv_det.demo")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="condconv_det.demo")
    yield caplog
    logger.removeHandler(caplog.handler)


def save_image(path, height: int, width: int) -> np.ndarray:
    """Saves and returns a grey ``(height, width, 3)`` image with a blue rectangle."""
    image = np.full((height, width, 3), 200, dtype=np.uint8)
    image[height // 4 : height // 2, width // 4 : width // 2] = (30, 60, 200)
    Image.fromarray(image).save(path)
    return image


def test_one_image_per_input_at_its_size(tmp_path):
    images, other = tmp_path / "images", tmp_path / "other"
    images.mkdir()
    other.mkdir()
    save_image(images / "a.png", 90, 120)
    save_image(images / "b.jpg", 128, 64)
    (images / "notes.txt").write_text("not an image: directories contribute image files only")
    save_image(other / "a.png", 50, 70)  # same name as images/a.png: must not overwrite it
    out = tmp_path / "out" / "nested"  # created, parents too
    # Overrides right after --input's values: they must not be taken for inputs.
    argv = ["--config-file", CONFIG, "--output", str(out), "--confidence-threshold", "0.2"]
    argv += ["--input", str(images), str(other / "a.png"), *TINY]
    assert demo.main(argv) == 0
    assert sorted(os.listdir(out)) == ["a-2.png", "a.png", "b.jpg"]
    assert Image.open(out / "a.png").size == (120, 90)
    assert Image.open(out / "b.jpg").size == (64, 128)
    assert Image.open(out / "a-2.png").size == (70, 50)


def test_threshold_decides_what_is_drawn(tmp_path):
    image = np.full((80, 100, 3), 128, dtype=np.uint8)  # flat: the Visualizer copies it exactly
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "flat.png")
    pattern = str(tmp_path / "in" / "*.png")
    for threshold, drawn in (("1.0", False), ("0.0", True)):
        out = tmp_path / f"out_{threshold}"
        argv = ["--config-file", CONFIG, "--input", pattern, "--output", str(out)]
        argv += ["--confidence-threshold", threshold, *TINY]
        assert demo.main(argv) == 0
        result = np.asarray(Image.open(out / "flat.png").convert("RGB"))
        assert result.shape == image.shape
        # Softmax scores of a random model are > 0: every box is drawn at threshold 0, none at 1.
        assert (result != image).any() == drawn


def test_corrupt_image_is_named_and_skipped(tmp_path, demo_log):
    images = tmp_path / "images"
    images.mkdir()
    save_image(images / "a.png", 60, 80)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    save_image(images / "c.png", 70, 50)
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--input", str(images), "--output", str(out), *TINY]
    assert demo.main(argv) == 1
    assert sorted(os.listdir(out)) == ["a.png", "c.png"]
    errors = [r.getMessage() for r in demo_log.records if r.levelno == logging.ERROR]
    assert any(str(images / "broken.png") in m and "cannot read image" in m for m in errors)
    assert "2 of 3 images drawn" in demo_log.text and "1 failed" in demo_log.text


def test_split_overrides():
    assert demo.split_overrides(["a.jpg", "dir/", "MODEL.WEIGHTS", "m.pth"]) == (
        ["a.jpg", "dir/"],
        ["MODEL.WEIGHTS", "m.pth"],
    )
    assert demo.split_overrides(["a.jpg"]) == (["a.jpg"], [])


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_no_images_found_names_the_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    argv = ["--config-file", CONFIG, "--input", str(tmp_path / "empty"), str(tmp_path / "*.jpg")]
    err = error_of(argv + ["--output", str(tmp_path / "out"), *TINY], capsys)
    assert "no images found" in err and str(tmp_path / "empty") in err and ".jpg" in err
    assert not (tmp_path / "out").exists()


def test_missing_input_and_missing_output_are_explained(tmp_path, capsys):
    save_image(tmp_path / "a.png", 40, 40)
    argv = ["--config-file", CONFIG, "--input", str(tmp_path / "a.png"), *TINY]
    err = error_of(argv, capsys)
    assert "--output DIR is required" in err and "one drawn image per input" in err

    typo = str(tmp_path / "a.pgn")
    err = error_of(["--config-file", CONFIG, "--input", typo, "--output", str(tmp_path)], capsys)
    assert typo in err and "do(es) not exist" in err

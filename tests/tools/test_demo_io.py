"""tools/demo.py and its files: outputs that would replace inputs are refused before any work,
drawn images are written whole or not at all, 16-bit inputs are drawn with their gradient."""

import os

import numpy as np
import pytest
from PIL import Image

from tests.tools.test_demo import CONFIG, TINY, demo, error_of, save_image


@pytest.fixture
def images(tmp_path):
    """A folder of two images; returns it and its files' bytes."""
    folder = tmp_path / "images"
    folder.mkdir()
    save_image(folder / "a.png", 40, 50)
    save_image(folder / "b.jpg", 30, 20)
    return folder, {name: (folder / name).read_bytes() for name in ("a.png", "b.jpg")}


def unchanged(folder, contents) -> bool:
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)} == contents


@pytest.mark.parametrize("output", ["same", "relative", "symlink", "file's folder"])
def test_output_over_the_inputs_is_refused_and_the_inputs_kept(tmp_path, images, capsys, output):
    folder, contents = images
    inputs = [str(folder)]
    if output == "same":
        out = str(folder)
    elif output == "relative":
        out = os.path.join(os.path.relpath(folder), "..", "images")
    elif output == "symlink":
        out = str(tmp_path / "link")
        os.symlink(folder, out)
    else:  # an image named alone: its drawing would get its name, in its folder
        inputs, out = [str(folder / "a.png")], str(folder)
    err = error_of(["--config-file", CONFIG, "--input", *inputs, "--output", out, *TINY], capsys)
    clash = out if output != "file's folder" else os.path.join(out, "a.png")
    assert f"--output would write over --input {inputs[0]!r}: {clash!r} is the same" in err
    assert "Choose another --output" in err
    assert unchanged(folder, contents)


def test_output_folder_inside_the_input_folder_is_allowed(images):
    folder, contents = images
    argv = ["--config-file", CONFIG, "--input", str(folder), "--output", str(folder / "drawn")]
    assert demo.main(argv + TINY) == 0
    assert sorted(os.listdir(folder / "drawn")) == ["a.png", "b.jpg"]
    os.rename(folder / "drawn", folder.parent / "drawn")
    assert unchanged(folder, contents)


def test_an_interrupted_write_leaves_no_cut_file(tmp_path, images, monkeypatch):
    folder, _ = images
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"an earlier drawing")

    def save_cut_short(self, fp, format=None, **params):
        with open(fp, "wb") if isinstance(fp, (str, os.PathLike)) else fp as f:
            f.write(b"\x89PNG\r\n\x1a\n cut")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_cut_short)
    argv = ["--config-file", CONFIG, "--input", str(folder), "--output", str(out), *TINY]
    assert demo.main(argv) == 1
    assert os.listdir(out) == ["a.png"]  # no b.jpg and no temporary file
    assert (out / "a.png").read_bytes() == b"an earlier drawing"


def test_16bit_image_is_drawn_with_its_gradient(tmp_path):
    values = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (48, 1))
    Image.fromarray(values).save(tmp_path / "gray16.png")
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--input", str(tmp_path / "gray16.png"), "--output", str(out)]
    assert demo.main(argv + ["--confidence-threshold", "1.0", *TINY]) == 0  # nothing drawn
    drawn = np.asarray(Image.open(out / "gray16.png").convert("RGB")).astype(int)
    expected = np.repeat((values >> 8)[..., None], 3, axis=-1).astype(int)
    assert drawn.shape == expected.shape
    assert np.abs(drawn - expected).max() <= 1  # the Visualizer's canvas rounds
    assert len(np.unique(drawn)) > 200

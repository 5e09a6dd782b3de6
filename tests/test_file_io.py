"""condconv_det.file_io.check_outputs_spare_inputs: outputs compared with inputs as files on
disk."""

import os

import pytest

from condconv_det.file_io import check_outputs_spare_inputs


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """``in/a.png`` and ``in/b.png``, and the working directory at ``tmp_path``."""
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "in" / name).write_bytes(b"image")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refusal(inputs, outputs=(), folders=()) -> str:
    with pytest.raises(ValueError) as info:
        check_outputs_spare_inputs(inputs, outputs, folders, option="--output")
    return str(info.value)


def test_the_same_file_under_another_name_is_refused(tree):
    inputs = [("--input", "in/a.png")]
    (tree / "link").symlink_to(tree / "in")
    os.link(tree / "in" / "a.png", tree / "hard.png")
    for output in (
        "in/a.png",
        str(tree / "in" / "a.png"),
        "in/../in/a.png",
        "link/a.png",
        "hard.png",
    ):
        message = refusal(inputs, [output])
        assert "--input 'in/a.png'" in message and repr(output) in message
        assert "Choose another --output" in message


def test_the_input_folder_is_refused_as_output_folder(tree):
    message = refusal([("--input", "in")], ["in/"])
    assert "--input 'in'" in message and "same folder" in message


def test_other_paths_pass(tree):
    inputs = [("--input", "in"), ("--input", "in/a.png"), ("MODEL.WEIGHTS", "")]
    inputs.append(("MODEL.WEIGHTS", "https://example.com/in/a.png"))  # not a local file
    check_outputs_spare_inputs(
        inputs, ["out", "out/a.png", "in/sub/a.png", "in/c.png"], option="-o"
    )


def test_an_output_folder_may_not_hold_an_input(tree):
    inputs = [("--config-file", "in/a.png")]
    message = refusal(inputs, folders=["in"])
    assert "holds --config-file 'in/a.png'" in message and "move the input out" in message
    assert "is --config-file" in refusal(inputs, folders=["in/a.png"])
    check_outputs_spare_inputs(inputs, output_folders=["in/sub", "out"], option="--output")

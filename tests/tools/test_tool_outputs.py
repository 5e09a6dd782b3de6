"""The tools that write files refuse outputs that would replace their inputs, before any work,
and write single files atomically: convert_pretrained, export_model, analyze_routing,
compare_twins (the demo's own: test_demo_io.py)."""

import os

import pytest
import torch
import torchvision

from tests.tools import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "shapes", "ssd_condconv_MNv1.yaml")


@pytest.fixture(scope="module")
def convert():
    return load_tool("convert_pretrained")


@pytest.fixture
def resnet18(tmp_path):
    """A torchvision ResNet-18 checkpoint; returns its path and bytes."""
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path, path.read_bytes()


@pytest.mark.parametrize("output", ["same", "relative", "symlink", "hard link"])
def test_convert_refuses_output_over_input(convert, resnet18, tmp_path, capsys, output):
    source, content = resnet18
    out = str(source)
    if output == "relative":
        out = os.path.join(os.path.relpath(tmp_path), "sub", "..", "r18.pth")
    elif output == "symlink":
        out = str(tmp_path / "link.pth")
        os.symlink(source, out)
    elif output == "hard link":
        out = str(tmp_path / "hard.pth")
        os.link(source, out)
    argv = ["--source", "torchvision-resnet", "--input", str(source), "--output", out]
    with pytest.raises(SystemExit) as info:
        convert.main(argv + ["--arch", "resnet18"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--output would write over --input {str(source)!r}" in err and repr(out) in err
    assert "Choose another --output" in err
    assert source.read_bytes() == content


def test_convert_writes_whole_or_leaves_the_old_file(convert, resnet18, tmp_path, monkeypatch):
    source, _ = resnet18
    out = tmp_path / "r18_cc.pth"
    out.write_bytes(b"an earlier conversion")

    def save_cut_short(obj, f, *args, **kwargs):
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else f as file:
            file.write(b"PK\x03\x04 cut")
        raise RuntimeError("killed while writing")

    argv = ["--source", "torchvision-resnet", "--input", str(source), "--output", str(out)]
    argv += ["--arch", "resnet18", "--experts", "2"]
    monkeypatch.setattr(torch, "save", save_cut_short)
    with pytest.raises(RuntimeError, match="killed"):
        convert.main(argv)
    assert out.read_bytes() == b"an earlier conversion"
    assert sorted(os.listdir(tmp_path)) == ["r18.pth", "r18_cc.pth"]  # no temporary file left

    monkeypatch.undo()
    assert convert.main(argv) == 0
    assert "model" in torch.load(out, weights_only=True)


def test_export_refuses_output_over_the_weights(tmp_path, capsys):
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"weights")
    export = load_tool("export_model")
    argv = ["--config-file", CONFIG, "--output", str(weights), "MODEL.WEIGHTS", str(weights)]
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--output would write over MODEL.WEIGHTS {str(weights)!r}" in err
    assert weights.read_bytes() == b"weights"


def test_analyze_routing_refuses_output_over_the_weights(tmp_path):
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"weights")
    tool = load_tool("analyze_routing")
    argv = ["--config-file", CONFIG, "--output", str(weights), "MODEL.WEIGHTS", str(weights)]
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    assert f"--output would write over MODEL.WEIGHTS {str(weights)!r}" in str(info.value)
    assert weights.read_bytes() == b"weights"


def test_compare_twins_refuses_a_config_inside_a_run_folder(tmp_path):
    run = tmp_path / "condconv" / "seed0"
    run.mkdir(parents=True)
    config = run / "config.yaml"
    config.write_text("# the config.yaml a training run wrote\n")
    tool = load_tool("compare_twins")
    with pytest.raises(SystemExit) as info:
        tool.main(
            ["--config-file", str(config), "--output-dir", str(tmp_path), "--from-static", "0"]
        )
    message = str(info.value)
    assert f"--output-dir would write into {str(run)!r}" in message
    assert f"holds --config-file {str(config)!r}" in message
    assert os.listdir(run) == ["config.yaml"]

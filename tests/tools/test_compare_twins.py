"""tools/compare_twins.py: reads each twin's final COCO evaluation and prints them side by side."""
import json
import os

import pytest

from . import load_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "shapes", "ssd_condconv_MNv1.yaml")


def _metrics(path, ap):
    os.makedirs(path)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 9, "bbox/AP": ap - 5, "bbox/AP50": 1.0}) + "\n")  # older
        last = {f"bbox/{m}": ap + i for i, m in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"])}
        last["bbox/APl"] = float("nan")  # COCO's value for a size class without objects
        f.write(json.dumps({"iteration": 19, "bbox/AP-circle": ap / 2, **last}) + "\n")


def test_side_by_side_table_from_finished_runs(tmp_path, capsys):
    tool = load_tool("compare_twins")
    _metrics(tmp_path / "condconv", 30.0)
    _metrics(tmp_path / "static", 27.5)
    assert tool.main(["--config-file", CONFIG, "--output-dir", str(tmp_path), "--skip-train"]) == 0
    out = capsys.readouterr().out
    assert "| box AP | 30.0 | 27.5 | +2.5 |" in out
    assert "| box AP50 | 31.0 | 28.5 | +2.5 |" in out
    assert "| box APl | - | - |  |" in out
    assert "|   AP circle | 15.0 | 13.8 | +1.2 |" in out or "|   AP circle | 15.0 | 13.8 | +1.3 |" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("|")}
    condconv_params, static_params = (float(v) for v in rows["parameters (M)"].split("|")[2:4])
    condconv_madds, static_madds = (float(v) for v in rows["multiply-adds (M)"].split("|")[2:4])
    assert condconv_params > 2 * static_params  # eight experts in the last blocks
    assert static_madds < condconv_madds < 1.2 * static_madds  # CondConv's promise: cheap
    assert float(rows["in CondConv experts (M)"].split("|")[3]) == 0.0
    assert "128x128" in rows["input size"]


def test_missing_run_says_to_train_first(tmp_path):
    tool = load_tool("compare_twins")
    with pytest.raises(FileNotFoundError, match="train first"):
        tool.main(["--config-file", CONFIG, "--output-dir", str(tmp_path), "--skip-train"])


def test_bad_arguments_are_named(tmp_path, capsys):
    tool = load_tool("compare_twins")
    with pytest.raises(SystemExit):
        tool.main(["--config-file", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config-file", CONFIG, "SOLVER.MAX_ITER"])
    assert "KEY VALUE" in capsys.readouterr().err

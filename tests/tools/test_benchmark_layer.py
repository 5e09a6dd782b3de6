"""tools/benchmark_layer.py runs and prints one complete row per case (no timing asserted). The
measurements are tested in tests/benchmarking/test_layer.py."""

import pytest

from tests.tools import load_tool


def _rows(out: str):
    lines = out.strip().splitlines()
    rows = [line for line in lines if line.startswith("| quick")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    return lines, rows


def test_quick_markdown_table_with_timm_peer_and_summary(capsys):
    tool = load_tool("benchmark_layer")
    assert tool.main(["--quick", "--markdown", "--experts", "2", "--batches", "1", "2"]) == 0
    lines, rows = _rows(capsys.readouterr().out)
    assert lines[0].startswith("# benchmark_layer:") and "GB/s" in lines[0]
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header[7:] == ["timm ms", "x timm", "floor ms", "x floor"]
    # 2 shapes x 2 batches x 2 modes x 1 expert count
    assert len(rows) == 8
    x_timm = []
    for cells in rows:
        assert len(cells) == len(header)
        static, cond, x_static, timm, xt, floor, x_floor = map(float, cells[4:])
        assert static > 0 and cond > 0 and timm > 0 and floor >= static
        assert abs(x_static - cond / static) <= 0.01 * x_static + 0.01
        assert abs(xt - cond / timm) <= 0.01 * xt + 0.01
        assert abs(x_floor - cond / floor) <= 0.01 * x_floor + 0.01
        x_timm.append(cond / timm)
    summary = lines[-1]
    assert summary.startswith("# summary: 8 rows; geomean x timm")
    # batch-1 eval rows: 2 shapes; batch-2 rows: 2 shapes x 2 modes
    assert "/2; batch>1 within" in summary and summary.endswith("/4")


def test_optional_columns(capsys):
    tool = load_tool("benchmark_layer")
    argv = ["--quick", "--markdown", "--experts", "2", "--batches", "2", "--modes", "eval"]
    argv += ["--paths", "grouped", "matmul", "experts", "--loop", "--channels-last"]
    argv += ["--inference-mode", "--stat", "min"]
    assert tool.main(argv) == 0
    lines, rows = _rows(capsys.readouterr().out)
    assert "channels_last" in lines[0] and "inference_mode" in lines[0]
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header[11:] == ["grouped ms", "matmul ms", "experts ms", "x loop"]
    assert len(rows) == 2 and all(len(r) == len(header) for r in rows)


def test_single_path_needs_batch_one():
    tool = load_tool("benchmark_layer")
    with pytest.raises(SystemExit):
        tool.main(["--quick", "--paths", "single", "--batches", "1", "8"])


def test_mix_table(capsys):
    tool = load_tool("benchmark_layer")
    assert tool.main(["--mix", "--quick", "--markdown", "--experts", "2", "4"]) == 0
    lines, rows = _rows(capsys.readouterr().out)
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header[:5] == ["shape", "E", "experts MB", "read GB/s", "ours ms"]
    assert [r[1] for r in rows] == ["2", "4"] and all(len(r) == len(header) for r in rows)
    stores = ["bfloat16", "bfloat16 eager", "int8", "int8 eager"]
    assert header[-8:] == [f"{s}{unit}" for s in stores for unit in (" ms", " x float32")]
    assert lines[-2].startswith("# mix summary: batch-1 mix at >= 0.8") and "on " in lines[-2]
    assert lines[-1].startswith("# reduced precision: bfloat16 experts ")
    assert "; int8 experts " in lines[-1] and "; int8 eager experts " in lines[-1]

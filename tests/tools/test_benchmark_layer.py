"""tools/benchmark_layer.py runs and prints one complete row per case (no timing asserted)."""
import importlib.util
import pathlib

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "benchmark_layer.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_layer", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_markdown_table(capsys):
    tool = _load_tool()
    assert tool.main(["--quick", "--markdown", "--experts", "2", "--batches", "1", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# benchmark_layer:") and "GB/s" in lines[0]
    rows = [line for line in lines[3:] if line.startswith("| quick")]
    # 2 shapes x 2 batches x 2 modes x 1 expert count
    assert len(rows) == 8
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 10
        static, cond, x_static, x_loop, floor, x_floor = map(float, cells[4:])
        assert static > 0 and cond > 0 and floor >= static
        assert abs(x_static - cond / static) <= 0.01 * x_static + 0.01
        assert abs(x_floor - cond / floor) <= 0.01 * x_floor + 0.01

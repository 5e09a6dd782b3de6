"""tools/benchmark_layer.py runs and prints one complete row per case (no timing asserted)."""
from tests.tools import load_tool


def test_quick_markdown_table(capsys):
    tool = load_tool("benchmark_layer")
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

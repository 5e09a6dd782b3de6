"""condconv_det.benchmarking.table: the result tables' plain-text and Markdown lines."""

from condconv_det.benchmarking.table import format_table


def test_markdown_table():
    lines = format_table(["model", "x"], [["a", "1.00"], ["bb", "2.00"]], markdown=True)
    assert lines == ["| model | x |", "|---|---|", "| a | 1.00 |", "| bb | 2.00 |"]


def test_plain_table_aligns_names_left_and_numbers_right():
    lines = format_table(["model", "x", "time ms"], [["a", "in", "1.0"]], markdown=False, left=2)
    assert lines == ["model  x   time ms", "a      in      1.0"]

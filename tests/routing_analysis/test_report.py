"""condconv_det.routing_analysis.report: the CSVs hold the summary's numbers by layer, class and
expert (empty cells for a class without images), the text table one row per layer, the plots
are PNGs."""

import csv
import math
import os

import numpy as np
import pytest
from PIL import Image

from condconv_det.routing_analysis import (
    CSV_FILES,
    PLOT_FILES,
    format_table,
    summarize_routing,
    write_csvs,
    write_plots,
)


@pytest.fixture
def summary():
    """Two layers over four images of classes 0 and 1 (class 2 has none); in the second layer
    expert 2 is never used and the routing follows the class."""
    early = np.array([[0.5, 0.5], [0.4, 0.6], [0.6, 0.4], [0.5, 0.5]])
    late = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0]])
    routing = {"backbone.bottom_up.res2.0": early, "head.cls_score.0": late}
    return summarize_routing(routing, [{0}, {0}, {1}, {1}], ["cat", "dog", "owl"])


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csvs_hold_the_summary(summary, tmp_path):
    paths = write_csvs(summary, str(tmp_path))
    assert paths == [os.path.join(str(tmp_path), name) for name in CSV_FILES]
    per_class, overall, layers = (read(p) for p in paths)
    assert len(per_class) == 2 * 3 + 3 * 3  # classes x experts per layer
    dog = [r for r in per_class if r["layer"] == "head.cls_score.0" and r["class"] == "dog"]
    assert [float(r["mean_weight"]) for r in dog] == [0.1, 0.9, 0.0]
    assert {r["num_images"] for r in dog} == {"2"} and dog[0]["depth"] == "1"
    owl = [r for r in per_class if r["class"] == "owl"]
    assert all(r["mean_weight"] == "" and r["num_images"] == "0" for r in owl)
    assert [r["unused"] for r in overall] == ["0", "0", "0", "0", "1"]
    assert [r["layer"] for r in layers] == list(summary.layers)
    assert float(layers[1]["max_entropy"]) == pytest.approx(math.log(3), rel=1e-5)  # 6 digits
    # The class fixes experts 0 and 1; expert 2 does not vary, and counts as 0.
    assert float(layers[1]["class_share"]) == pytest.approx(2 / 3, rel=1e-5)
    assert layers[1]["unused_experts"] == "1"


def test_table_has_one_row_per_layer(summary):
    lines = format_table(summary).splitlines()
    assert lines[0] == "" and lines[1] == "4 images; per class: 2 cat, 2 dog, 0 owl"
    assert lines[2].split()[:3] == ["depth", "layer", "E"]
    assert lines[3].split()[:3] == ["0", "res2.0", "2"]  # the backbone prefix left out
    assert lines[4].split() == ["1", "head.cls_score.0", "3", lines[4].split()[3], "0.667", "1"]


def test_plots_are_pngs(summary, tmp_path):
    paths = write_plots(summary, str(tmp_path), "test", num_heatmaps=2)
    assert paths == [os.path.join(str(tmp_path), name) for name in PLOT_FILES]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_the_depth_plot_shows_the_between_class_variance_on_a_log_axis(summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from condconv_det.routing_analysis.report import _plot_depth

    fig, ax = plt.subplots()
    try:
        _plot_depth(ax, summary)
        assert len(fig.axes) == 2
        right = fig.axes[1]
        assert right.get_yscale() == "log"
        (line,) = right.get_lines()
        want = [summary.between_class_var[layer] for layer in summary.layers]
        shown = [v for v in want if v > 0]
        assert list(line.get_ydata()) == pytest.approx(shown)
        labels = [text.get_text() for text in right.get_legend().get_texts()]
        assert "between-class variance (right)" in labels
    finally:
        plt.close(fig)

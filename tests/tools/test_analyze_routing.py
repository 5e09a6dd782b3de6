"""tools/analyze_routing.py: its CSVs match an independent recomputation from router hooks,
class counts are exact, unused experts are flagged, the plots are PNGs, bad input is named."""

import csv
import math
import os
from collections import defaultdict

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from condconv_det.config import get_cfg
from condconv_det.data import SSDDatasetMapper, register_shapes
from condconv_det.layers import CondConvRouter

from . import load_tool

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "shapes", "ssd_condconv_MNv1.yaml"
)
EXPERTS = 4
TINY = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.MOBILENET.WIDTH_MULT",
    "0.25",
    "MODEL.CONDCONV.NUM_EXPERTS",
    str(EXPERTS),
    "MODEL.CONDCONV.ROUTER_INIT",
    "glorot",
]
NUM_IMAGES = 5  # of the 6 validation images: --max-images takes the first ones
FORCED = ("backbone.bottom_up.res4.3", 1)  # (layer, expert) whose router bias is set to -20


def _cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*TINY, *opts])
    return cfg


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    register_shapes(root, num_train=2, num_val=6, progress=False)
    yield root
    register_shapes()  # back to the default registration


@pytest.fixture(scope="module")
def weights(shapes, tmp_path_factory):
    """Random weights whose routing varies between images, one expert forced off."""
    torch.manual_seed(0)
    model = build_model(_cfg())
    # With running statistics at their init (mean 0, var 1), a random MobileNetV1's activations
    # shrink ~10x per block in eval mode and every router outputs sigmoid(~0) = 0.5. One
    # training-mode pass with cumulative averaging sets them to real batch statistics.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    images = torch.rand(4, 3, 128, 128) * 255
    with torch.no_grad():
        model.backbone.train()((images - model.pixel_mean) / model.pixel_std)
    routers = {
        n[: -len(".router")]: m for n, m in model.named_modules() if isinstance(m, CondConvRouter)
    }
    layer, expert = FORCED
    with torch.no_grad():
        routers[layer].fc.weight[expert].zero_()
        routers[layer].fc.bias[expert] = -20.0
    path = str(tmp_path_factory.mktemp("weights") / "model.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


def _reference(weights_path):
    """Per-image routing of the first NUM_IMAGES images by plain forward hooks, image by image.

    Returns:
        (records, {layer: (N, E)}, layer names in execution order)
    """
    cfg = _cfg("MODEL.WEIGHTS", weights_path)
    model = build_model(cfg).eval()
    model.load_state_dict(torch.load(weights_path, weights_only=False)["model"])
    calls, order = defaultdict(list), []

    def hook(name):
        def record(module, inputs, output):
            if name not in order:
                order.append(name)
            calls[name].append(output[0].numpy().copy())

        return record

    for name, m in model.named_modules():
        if isinstance(m, CondConvRouter):
            m.register_forward_hook(hook(name[: -len(".router")]))
    records = DatasetCatalog.get("shapes_val")[:NUM_IMAGES]
    mapper = SSDDatasetMapper(cfg, is_train=False)
    with torch.no_grad():
        for record in records:
            model([mapper(dict(record))])
    return records, {k: np.stack(v) for k, v in calls.items()}, order


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def analysis(weights, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("routing"))
    tool = load_tool("analyze_routing")
    tool.main(
        [
            "--config-file",
            CONFIG,
            "--dataset",
            "shapes_val",
            "--max-images",
            str(NUM_IMAGES),
            "--output",
            out,
            *TINY,
            "MODEL.WEIGHTS",
            weights,
        ]
    )
    return out


def test_csv_matches_an_independent_recomputation(analysis, weights):
    records, routing, order = _reference(weights)
    classes = MetadataCatalog.get("shapes_val").thing_classes
    holds = [{a["category_id"] for a in r["annotations"]} for r in records]
    rows = _read(os.path.join(analysis, "routing.csv"))

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    assert layers == order and len(order) > 3  # every router, by execution order (depth)
    assert [int(r["depth"]) for r in rows] == [order.index(r["layer"]) for r in rows]
    for layer in order:
        mine = [r for r in rows if r["layer"] == layer]
        assert len(mine) == len(classes) * EXPERTS
        for c, name in enumerate(classes):
            of_class = [r for r in mine if r["class"] == name]
            assert [int(r["expert"]) for r in of_class] == list(range(EXPERTS))
            members = [i for i, h in enumerate(holds) if c in h]
            assert {int(r["num_images"]) for r in of_class} == {len(members)}
            if not members:
                assert all(r["mean_weight"] == "" for r in of_class)
                continue
            expected = routing[layer][members].mean(axis=0)
            got = np.array([float(r["mean_weight"]) for r in of_class])
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
            p = routing[layer][members] / routing[layer][members].sum(axis=1, keepdims=True)
            entropy = float(np.mean([-sum(x * math.log(x) for x in row if x > 0) for row in p]))
            assert float(of_class[0]["entropy"]) == pytest.approx(entropy, rel=1e-5)
            assert 0.0 <= float(of_class[0]["entropy"]) <= math.log(EXPERTS) + 1e-6
    # The images vary: routing is not the constant 0.5 of an uncalibrated random model.
    assert max(routing[layer].std(axis=0).max() for layer in order) > 1e-3


def test_class_counts_and_overall_means(analysis, weights):
    records, routing, order = _reference(weights)
    classes = MetadataCatalog.get("shapes_val").thing_classes
    rows = _read(os.path.join(analysis, "routing.csv"))
    first = [r for r in rows if r["layer"] == order[0] and r["expert"] == "0"]
    counts = {r["class"]: int(r["num_images"]) for r in first}
    expected = {
        name: sum(any(a["category_id"] == c for a in r["annotations"]) for r in records)
        for c, name in enumerate(classes)
    }
    assert counts == expected
    # Every image holds 2..8 objects: at least as many class memberships as images.
    assert sum(counts.values()) >= NUM_IMAGES

    overall = _read(os.path.join(analysis, "routing_overall.csv"))
    assert len(overall) == len(order) * EXPERTS
    assert {int(r["num_images"]) for r in overall} == {NUM_IMAGES}
    for layer in order:
        got = [float(r["mean_weight"]) for r in overall if r["layer"] == layer]
        np.testing.assert_allclose(got, routing[layer].mean(axis=0), rtol=1e-5, atol=1e-7)
    layers = _read(os.path.join(analysis, "routing_layers.csv"))
    assert [r["layer"] for r in layers] == order
    for r in layers:
        assert 0.0 <= float(r["entropy"]) <= float(r["max_entropy"]) + 1e-6
        assert float(r["max_entropy"]) == pytest.approx(math.log(EXPERTS), rel=1e-5)


def test_unused_expert_is_flagged_only_where_forced(analysis):
    flagged = {
        (r["layer"], int(r["expert"]))
        for r in _read(os.path.join(analysis, "routing_overall.csv"))
        if r["unused"] == "1"
    }
    assert flagged == {FORCED}
    per_class = {
        (r["layer"], int(r["expert"]))
        for r in _read(os.path.join(analysis, "routing.csv"))
        if r["unused"] == "1"
    }
    assert per_class == {FORCED}
    layers = {
        r["layer"]: int(r["unused_experts"])
        for r in _read(os.path.join(analysis, "routing_layers.csv"))
    }
    assert layers[FORCED[0]] == 1 and sum(layers.values()) == 1


def test_plots_are_valid_pngs(analysis):
    for name in ("routing_heatmaps.png", "routing_depth.png", "routing_summary.png"):
        path = os.path.join(analysis, name)
        with Image.open(path) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert width > 200 and height > 200
            assert np.asarray(image.convert("L")).std() > 5  # not a blank canvas


def _error(tool, *args):
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", CONFIG, *args])
    return str(e.value)


def test_errors_name_the_problem(shapes, tmp_path):
    tool = load_tool("analyze_routing")
    out = str(tmp_path / "out")
    message = _error(tool, "--dataset", "shapes_vall", "--output", out, *TINY)
    assert "'shapes_vall' is not registered" in message
    assert "'shapes_train'" in message and "'shapes_val'" in message

    DatasetCatalog.register("routing_test_empty", lambda: [])
    try:
        message = _error(tool, "--dataset", "routing_test_empty", "--output", out, *TINY)
    finally:
        DatasetCatalog.remove("routing_test_empty")
    assert "'routing_test_empty' has no images" in message

    static = ("MODEL.CONDCONV.NUM_EXPERTS", "0")
    message = _error(tool, "--max-images", "1", "--output", out, *TINY, *static)
    assert "no CondConv router" in message and "NUM_EXPERTS" in message
    assert not os.path.exists(out)

"""tools/export_model.py: a tiny shapes SSD-CondConv (random weights) through torch.export, to
ONNX (dynamo and legacy exporters) and to TorchScript, checked against the PyTorch detector at
several batch sizes, and the tool's errors."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from condconv_det.config import get_cfg
from condconv_det.export import (
    ExportCheckError,
    check_close,
    compare_detections,
    import_tracing_adapter,
)
from condconv_det.modeling.meta_arch import SSDHead
from tests.tools import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "shapes", "ssd_condconv_MNv1.yaml")
SIZE = 64
TINY = [
    "MODEL.MOBILENET.WIDTH_MULT", "0.25",
    "MODEL.CONDCONV.NUM_EXPERTS", "2",
    "INPUT.SSD.SIZE", str(SIZE),
]  # fmt: skip


def tiny_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + ["MODEL.DEVICE", "cpu"])
    return cfg


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """(model, checkpoint path): the tiny SSD with random weights, saved as tools/train_net.py
    saves a model. Batch-norm statistics are set from one random batch: with untrained,
    independently drawn experts the mixed kernels shrink the features layer after layer to
    ~1e-14, all scores tie and a detection comparison would only test tie-breaking."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running stats = this batch's
    model.train()
    with torch.no_grad():
        images = (torch.rand(4, 3, SIZE, SIZE) * 255 - model.pixel_mean) / model.pixel_std
        features = model.backbone(images)
        model.head([features[f] for f in model.head_in_features])
    model.eval()
    path = str(tmp_path_factory.mktemp("weights") / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 2}, path)
    return model, path


def random_images(batch: int, seed: int) -> torch.Tensor:
    """(batch, 3, SIZE, SIZE) images, 0-255, smooth enough to look like something."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=g) * 255
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def reference_predictions(model, images: torch.Tensor):
    """Class logits (N, R, K + 1) and deltas (N, R, 4) computed by the detector's own code."""
    with torch.no_grad():
        batched = model.preprocess_image([{"image": x} for x in images])
        features = model.backbone(batched.tensor)
        features = [features[f] for f in model.head_in_features]
        logits, deltas = model._transpose_dense_predictions(
            model.head(features), [model.num_classes + 1, 4]
        )
    return torch.cat(logits, 1), torch.cat(deltas, 1)


def reference_detections(model, image: torch.Tensor) -> Instances:
    with torch.no_grad():
        return model([{"image": image}])[0]["instances"]


def as_instances(outputs, names) -> Instances:
    """The exported detector's flat outputs (boxes, classes, scores, image size) as Instances."""
    outputs = dict(zip(names, [torch.as_tensor(np.asarray(o)) for o in outputs]))
    size = tuple(int(v) for v in outputs.pop("image_size"))
    return Instances(
        size,
        pred_boxes=Boxes(outputs["pred_boxes"]),
        scores=outputs["scores"],
        pred_classes=outputs["pred_classes"],
    )


def run_tool(*args) -> int:
    return load_tool("export_model").main(["--config-file", CONFIG, *args])


@pytest.fixture(scope="module")
def torchscript_export(detector, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ts"))
    assert run_tool("--output", out, *TINY, "MODEL.WEIGHTS", detector[1]) == 0
    return out


@pytest.fixture(scope="module")
def program_export(detector, tmp_path_factory):
    """(output folder, what the tool printed) of --format torch-export."""
    out = str(tmp_path_factory.mktemp("pt2"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        argv = ["--format", "torch-export", "--output", out, *TINY, "MODEL.WEIGHTS", detector[1]]
        assert run_tool(*argv) == 0
    return out, printed.getvalue()


def _onnx_export(detector, tmp_path_factory, *flags):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = str(tmp_path_factory.mktemp("onnx"))
    argv = ["--format", "onnx", *flags, "--output", out, *TINY, "MODEL.WEIGHTS", detector[1]]
    assert run_tool(*argv) == 0
    return out


@pytest.fixture(scope="module")
def onnx_export(detector, tmp_path_factory):
    pytest.importorskip("onnxscript")
    return _onnx_export(detector, tmp_path_factory)  # the dynamo exporter, by default


@pytest.fixture(scope="module")
def onnx_legacy_export(detector, tmp_path_factory):
    return _onnx_export(detector, tmp_path_factory, "--onnx-exporter", "legacy")


def _assert_network_matches(network, model, batches, rtol, atol):
    """The exported network's logits and deltas equal the detector's own at each batch size."""
    for batch in batches:
        images = random_images(batch, seed=batch)
        with torch.no_grad():
            logits, deltas = network(images)
        ref_logits, ref_deltas = reference_predictions(model, images)
        assert logits.shape == ref_logits.shape == (batch, ref_logits.shape[1], 6)
        torch.testing.assert_close(logits, ref_logits, rtol=rtol, atol=atol)
        torch.testing.assert_close(deltas, ref_deltas, rtol=rtol, atol=atol)


def test_traced_network_matches_pytorch_at_any_batch(detector, torchscript_export):
    model, _ = detector
    network = torch.jit.load(os.path.join(torchscript_export, "network.ts"))
    # Traced at 2; 5 was never seen by the tool's own checks.
    _assert_network_matches(network, model, (1, 2, 3, 5), rtol=1e-4, atol=1e-4)
    # The examples of a batch are routed independently: example 0 alone = example 0 in a batch.
    images = random_images(3, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(
            network(images[:1])[0][0], network(images)[0][0], atol=1e-5, rtol=1e-5
        )


def test_anchors_decode_the_network_into_the_detectors_boxes(detector, torchscript_export):
    model, _ = detector
    anchors = torch.from_numpy(np.load(os.path.join(torchscript_export, "anchors.npy")))
    image = random_images(1, seed=11)
    with torch.no_grad():
        logits, deltas = torch.jit.load(os.path.join(torchscript_export, "network.ts"))(image)
    assert anchors.shape == (logits.shape[1], 4)
    boxes = model.box2box_transform.apply_deltas(deltas[0], anchors)
    boxes = Boxes(boxes)
    boxes.clip((SIZE, SIZE))
    scores = logits[0].softmax(dim=1)
    detections = reference_detections(model, image[0])
    assert len(detections) > 0
    for box, score, cls in zip(
        detections.pred_boxes.tensor[:10], detections.scores[:10], detections.pred_classes[:10]
    ):
        # Some anchor r has this score for this class and decodes to this box.
        r = (scores[:, cls] - score).abs().argmin()
        assert (scores[r, cls] - score).abs() < 1e-5
        torch.testing.assert_close(boxes.tensor[r], box, atol=1e-3, rtol=1e-4)


def test_traced_detector_matches_pytorch(detector, torchscript_export):
    model, _ = detector
    traced = torch.jit.load(os.path.join(torchscript_export, "detector.ts"))
    info = json.load(open(os.path.join(torchscript_export, "export.json")))
    assert info["detector"]["outputs"] == ["pred_boxes", "pred_classes", "scores", "image_size"]
    for seed in (1, 2):
        image = random_images(1, seed=seed)[0]
        with torch.no_grad():
            exported = as_instances(traced(image), info["detector"]["outputs"])
        result = compare_detections(reference_detections(model, image), exported, atol=1e-4)
        assert result["detections"] > 0


def test_export_json_reports_files_and_differences(torchscript_export):
    info = json.load(open(os.path.join(torchscript_export, "export.json")))
    assert info["network"]["batch"] == "dynamic"
    assert sorted(info["network"]["max_abs_diff"]) == ["1", "2", "3"]
    for diffs in info["network"]["max_abs_diff"].values():
        assert 0 <= diffs["logits"] < 1e-3 and 0 <= diffs["deltas"] < 1e-3
    assert info["input"] == {
        "channels": "RGB", "height": SIZE, "width": SIZE, "dtype": "float32",
        "range": "0-255, resized as at test time, not normalised",
    }  # fmt: skip
    for f in info["files"].values():
        assert os.path.getsize(f["path"]) == f["bytes"] > 0


def test_torch_export_network_has_a_dynamic_batch_and_matches_pytorch(detector, program_export):
    model, _ = detector
    out, _ = program_export
    program = torch.export.load(os.path.join(out, "network.pt2"))
    (images,) = [n for n in program.graph.nodes if n.name == "images"]
    batch, *size = images.meta["val"].shape
    assert isinstance(batch, torch.SymInt) and size == [3, SIZE, SIZE]
    # Exported at batch 2; 5 was never seen by the tool's own checks.
    _assert_network_matches(program.module(), model, (1, 2, 3, 5), rtol=1e-4, atol=1e-4)


def test_torch_export_says_why_the_whole_detector_is_not_exported(program_export):
    out, printed = program_export
    assert sorted(os.listdir(out)) == ["anchors.npy", "export.json", "network.pt2"]
    info = json.load(open(os.path.join(out, "export.json")))
    assert info["format"] == "torch-export" and info["detector"] is None
    assert info["network"]["batch"] == "dynamic"
    assert sorted(info["network"]["max_abs_diff"]) == ["1", "2", "3"]
    reason = info["detector_not_exported"]
    assert "torch.export cannot capture" in reason and "ImageList" in reason
    assert "--onnx-exporter legacy" in reason
    assert f"detector: not exported: {reason}" in printed


@pytest.mark.parametrize("exporter, opset", [("dynamo", 18), ("legacy", 17)])
def test_onnx_network_has_a_dynamic_batch_and_matches_pytorch(exporter, opset, detector, request):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, _ = detector
    fixture = "onnx_export" if exporter == "dynamo" else "onnx_legacy_export"
    folder = request.getfixturevalue(fixture)
    info = json.load(open(os.path.join(folder, "export.json")))
    assert info["onnx_exporter"] == exporter and info["opset"] == opset
    path = os.path.join(folder, "network.onnx")
    proto = onnx.load(path)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    (images_input,) = proto.graph.input
    dims = images_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 2, 3, 5):
        images = random_images(batch, seed=10 + batch)
        logits, deltas = session.run(["logits", "deltas"], {"images": images.numpy()})
        ref_logits, ref_deltas = reference_predictions(model, images)
        torch.testing.assert_close(torch.from_numpy(logits), ref_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.from_numpy(deltas), ref_deltas, rtol=1e-4, atol=1e-4)


def test_dynamo_onnx_writes_the_network_alone_and_says_why(onnx_export):
    assert not os.path.exists(os.path.join(onnx_export, "detector.onnx"))
    info = json.load(open(os.path.join(onnx_export, "export.json")))
    assert info["detector"] is None
    assert "torch.export cannot capture" in info["detector_not_exported"]


def test_legacy_onnx_detector_matches_pytorch(detector, onnx_legacy_export):
    ort = pytest.importorskip("onnxruntime")
    model, _ = detector
    session = ort.InferenceSession(
        os.path.join(onnx_legacy_export, "detector.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    assert names == ["pred_boxes", "pred_classes", "scores", "image_size"]
    image = random_images(1, seed=3)[0]
    exported = as_instances(session.run(None, {"image": image.numpy()}), names)
    result = compare_detections(reference_detections(model, image), exported, atol=1e-4)
    assert result["detections"] > 0


def test_sample_image_is_read_and_resized_as_at_test_time(tmp_path):
    from PIL import Image

    tool = load_tool("export_model")
    path = str(tmp_path / "sample.png")
    pixels = np.zeros((40, 90, 3), dtype=np.uint8)
    pixels[..., 0] = 200  # red in the file
    Image.fromarray(pixels).save(path)
    image = tool.load_sample_image(tiny_cfg(), path)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32  # SSD's square resize
    assert image[0].min() == 200 and image[1:].max() == 0  # RGB, the config's INPUT.FORMAT
    generated = tool.load_sample_image(tiny_cfg(), None)
    assert generated.shape == (3, SIZE, SIZE) and generated.std() > 10


@pytest.mark.parametrize(
    "flags, opts, message",
    [
        ([], ["MODEL.WEIGHTS", "/nonexistent/model_final.pth"], "does not exist"),
        ([], ["MODEL.WEIGHTS", ""], "MODEL.WEIGHTS is empty"),
        (["--format", "tflite"], [], "unknown --format 'tflite'"),
        (["--format", "onnx", "--export-method", "scripting"], [], "use --export-method tracing"),
        (
            ["--format", "torch-export", "--export-method", "scripting"],
            [],
            "is for --format torchscript",
        ),
        (["--format", "onnx", "--onnx-exporter", "tflite"], [], "unknown --onnx-exporter 'tflite'"),
        (["--onnx-exporter", "legacy"], [], "--onnx-exporter is for --format onnx"),
        (["--batch-sizes", "0,2"], [], "--batch-sizes takes positive ints"),
        ([], ["MODEL.NO_SUCH_KEY", "1"], "bad config overrides"),
        ([], ["MODEL.WEIGHTS"], "KEY VALUE pairs"),
    ],
)
def test_bad_input_names_the_problem(flags, opts, message, detector, tmp_path, capsys):
    # Options first, overrides last (a later MODEL.WEIGHTS wins), as on the command line.
    argv = [*flags, "--output", str(tmp_path), *TINY, "MODEL.WEIGHTS", detector[1], *opts]
    assert run_tool(*argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, "export.json"))


def test_checkpoint_of_another_model_is_refused(detector, tmp_path, capsys):
    # The tiny checkpoint against the full-width config: nothing may be exported half-loaded.
    assert run_tool("--output", str(tmp_path), "MODEL.WEIGHTS", detector[1]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "backbone.bottom_up" in err


def test_scripted_network_matches_pytorch(detector, tmp_path):
    model, _ = detector
    argv = ["--export-method", "scripting", "--output", str(tmp_path), *TINY]
    assert run_tool(*argv, "MODEL.WEIGHTS", detector[1]) == 0
    network = torch.jit.load(os.path.join(tmp_path, "network.ts"))
    _assert_network_matches(network, model, (1, 3), rtol=1e-5, atol=1e-6)


RESNET = [
    "MODEL.BACKBONE.NAME", "build_condconv_resnet_ssd_backbone",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.OUT_FEATURES", "['res3', 'res4', 'res5']",
    "MODEL.CONDCONV.RESNET_STAGES", "['res5']",
]  # fmt: skip


def test_scripted_resnet_network_matches_pytorch(tmp_path):
    # detectron2 0.6's ResNet keeps its stages in a plain list, which TorchScript cannot
    # compile; the tool applies detectron2's own scripting patch (a ModuleList on a copy).
    cfg = tiny_cfg()
    cfg.merge_from_list(RESNET)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = str(tmp_path / "resnet.pth")
    torch.save({"model": model.state_dict()}, path)
    argv = ["--export-method", "scripting", "--output", str(tmp_path / "out"), *TINY, *RESNET]
    assert run_tool(*argv, "MODEL.WEIGHTS", path) == 0
    network = torch.jit.load(os.path.join(tmp_path, "out", "network.ts"))
    images = random_images(3, seed=3)
    with torch.no_grad():
        logits, deltas = network(images)
    ref_logits, ref_deltas = reference_predictions(model, images)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(deltas, ref_deltas, rtol=1e-5, atol=1e-6)


def test_network_that_does_not_script_is_refused_with_the_reason(detector, tmp_path, capsys):
    tool = load_tool("export_model")

    class Unscriptable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * len({id(x): x})  # id() does not compile

    args = tool.parse_args(["--config-file", CONFIG, "--export-method", "scripting"])
    with pytest.raises(tool.ExportInputError, match="does not script") as error:
        tool.export_network(Unscriptable(), torch.zeros(1), args, str(tmp_path / "n.ts"))
    assert '.py", line' in str(error.value) and "--export-method tracing" in str(error.value)


@pytest.mark.parametrize("fmt", ["torch-export", "onnx"])
def test_network_that_does_not_export_is_refused_with_the_reason(fmt, tmp_path):
    tool = load_tool("export_model")

    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # a branch on the data: torch.export cannot guard it

    args = tool.parse_args(["--config-file", CONFIG, "--format", fmt])
    tool.check_args(args)
    path = tmp_path / "network.out"
    with pytest.raises(tool.ExportInputError, match="does not go through torch.export") as error:
        tool.export_network(DataDependent(), torch.ones(2, 3), args, str(path))
    # torch.export's own reason (for ONNX past the exporter's general advice), and the fix.
    assert "data-dependent" in str(error.value).split("\n")[1]
    assert "--onnx-exporter legacy" in str(error.value)
    assert not os.path.exists(path)


@pytest.mark.parametrize("depthwise", [False, True])
def test_ssd_head_scripts(depthwise):
    torch.manual_seed(0)
    shapes = [ShapeSpec(channels=8, stride=8), ShapeSpec(channels=16, stride=16)]
    head = SSDHead(
        input_shape=shapes, num_classes=3, num_anchors=[4, 6], depthwise=depthwise, num_experts=2
    ).eval()
    scripted = torch.jit.script(head)
    features = [torch.randn(3, 8, 6, 6), torch.randn(3, 16, 3, 3)]
    for got, want in zip(scripted(features), head(features)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_check_close_fails_above_the_tolerance():
    ref = torch.tensor([0.5, -0.25])
    assert check_close("x", ref, ref + 1e-4, atol=1e-3) == pytest.approx(1e-4, rel=1e-3)
    with pytest.raises(
        ExportCheckError, match="x: the exported model differs from PyTorch by 0.002"
    ):
        check_close("x", ref, ref + 2e-3, atol=1e-3)
    # Relative above magnitude 1: 0.05 off on values of 100 is within 1e-3.
    assert check_close("x", ref * 400, ref * 400 + 0.05, atol=1e-3) == pytest.approx(0.05, rel=1e-3)
    with pytest.raises(ExportCheckError, match="shape"):
        check_close("x", ref, ref[:1], atol=1e-3)
    with pytest.raises(ExportCheckError):
        check_close("x", ref, torch.tensor([float("nan"), 0.0]), atol=1e-3)


def test_compare_detections_ignores_order_but_not_content():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]])
    ref = Instances(
        (32, 32),
        pred_boxes=Boxes(boxes),
        scores=torch.tensor([0.9, 0.5, 0.5]),
        pred_classes=torch.tensor([0, 1, 2]),
    )
    order = torch.tensor([0, 2, 1])  # the two tied detections swapped
    out = Instances((32, 32), pred_boxes=Boxes(boxes[order] + 1e-4), scores=ref.scores[order],
                    pred_classes=ref.pred_classes[order])  # fmt: skip
    result = compare_detections(ref, out, atol=1e-3)
    assert result["detections"] == 3 and result["boxes"] == pytest.approx(1e-4, rel=1e-2)
    wrong_class = Instances((32, 32), pred_boxes=out.pred_boxes, scores=out.scores,
                            pred_classes=torch.tensor([0, 1, 1]))  # fmt: skip
    with pytest.raises(ExportCheckError, match="no counterpart"):
        compare_detections(ref, wrong_class, atol=1e-3)
    with pytest.raises(ExportCheckError, match="finds 2 objects, PyTorch 3"):
        compare_detections(ref, out[:2], atol=1e-3)


def test_tracing_adapter_imports_on_this_detectron2():
    adapter = import_tracing_adapter()
    assert adapter.__name__ == "TracingAdapter"

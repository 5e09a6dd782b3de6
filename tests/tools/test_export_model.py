"""tools/export_model.py: a tiny shapes SSD-CondConv (random weights) exported through the
command line with torch.export, to ONNX (dynamo and legacy exporters) and to TorchScript, the
written files checked against the PyTorch detector at several batch sizes, and the tool's
errors. The export package's own tests: tests/export/."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from condconv_det.export import compare_detections
from tests.tiny_ssd import (
    CONFIG,
    SIZE,
    TINY,
    assert_network_matches,
    calibrated_detector,
    random_images,
    reference_predictions,
    tiny_cfg,
)
from tests.tools import load_tool


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """(model, checkpoint path): :func:`calibrated_detector`."""
    path = str(tmp_path_factory.mktemp("weights") / "model_final.pth")
    return calibrated_detector(path), path


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


def test_traced_network_matches_pytorch_at_any_batch(detector, torchscript_export):
    model, _ = detector
    network = torch.jit.load(os.path.join(torchscript_export, "network.ts"))
    # Traced at 2; 5 was never seen by the tool's own checks.
    assert_network_matches(network, model, (1, 2, 3, 5), rtol=1e-4, atol=1e-4)
    # The examples of a batch are routed independently: example 0 alone = example 0 in a batch.
    # (Batch 1 and batch 3 mix their kernels on different paths, whose float32 rounding differs
    # by about 1e-5; routing shared across the batch would move the outputs by far more.)
    images = random_images(3, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(
            network(images[:1])[0][0], network(images)[0][0], atol=1e-4, rtol=1e-4
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
    assert_network_matches(program.module(), model, (1, 2, 3, 5), rtol=1e-4, atol=1e-4)


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
    assert_network_matches(network, model, (1, 3), rtol=1e-5, atol=1e-6)


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

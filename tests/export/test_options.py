"""condconv_det.export.ExportOptions: options that do not fit together are refused by name,
the ONNX exporter defaults to dynamo, and the files an export writes follow from the options."""

import os

import pytest

from condconv_det.export import ExportInputError, ExportOptions


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(format="tflite"), "unknown --format 'tflite': choose one of"),
        (dict(export_method="compiling"), "unknown --export-method 'compiling'"),
        (dict(format="onnx", export_method="scripting"), "use --export-method tracing"),
        (dict(format="torch-export", export_method="scripting"), "is for --format torchscript"),
        (dict(onnx_exporter="legacy"), "--onnx-exporter is for --format onnx"),
    ],
)
def test_options_that_do_not_fit_are_refused(options, message):
    with pytest.raises(ExportInputError, match=message):
        ExportOptions(**options)


def test_onnx_takes_the_dynamo_exporter_unless_told_otherwise():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    legacy = ExportOptions("onnx", onnx_exporter="legacy")
    assert (legacy.onnx_exporter, legacy.opset, legacy.extension) == ("legacy", 17, "onnx")
    with pytest.raises(ExportInputError, match="unknown --onnx-exporter 'tflite'"):
        ExportOptions("onnx", onnx_exporter="tflite")
    pytest.importorskip("onnxscript")
    assert (ExportOptions("onnx").onnx_exporter, ExportOptions("onnx").opset) == ("dynamo", 18)


@pytest.mark.parametrize(
    "options, detector",
    [
        (dict(), True),
        (dict(export_method="scripting"), False),
        (dict(format="torch-export"), False),
    ],
)
def test_output_files_follow_the_format(options, detector, tmp_path):
    options = ExportOptions(**options)
    files = options.output_files(str(tmp_path))
    ext = {"torchscript": "ts", "torch-export": "pt2"}[options.format]
    expected = {"network": f"network.{ext}", "anchors": "anchors.npy", "info": "export.json"}
    if detector:
        expected["detector"] = f"detector.{ext}"
    assert files == {k: os.path.join(str(tmp_path), v) for k, v in expected.items()}
    assert (options.detector_not_exported is None) == detector
    assert options.opset is None and options.onnx_exporter is None


def test_why_no_detector_is_written():
    reason = ExportOptions("torch-export").detector_not_exported
    assert "torch.export cannot capture" in reason and "network.pt2 with anchors.npy" in reason
    assert "--onnx-exporter legacy" in reason
    reason = ExportOptions(export_method="scripting").detector_not_exported
    assert "does not script" in reason and "--export-method tracing" in reason

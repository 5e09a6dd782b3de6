"""condconv_det.export.exporter: export_model from Python (no command line), the detector it
builds, and the networks it refuses with the capture's own reason."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from condconv_det.export import (
    ExportInputError,
    ExportOptions,
    build_detector,
    export_model,
    export_network,
)
from tests.tiny_ssd import SIZE, assert_network_matches, calibrated_detector, tiny_cfg


def test_export_model_writes_checked_files_and_builds_on_the_cpu(tmp_path):
    model = calibrated_detector(str(tmp_path / "model.pth"))
    cfg = tiny_cfg()
    # A trace must be made on the CPU (it records devices), whatever the config says.
    cfg.merge_from_list(["MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", str(tmp_path / "model.pth")])
    cfg.freeze()
    Image.fromarray(np.full((30, 50, 3), 90, dtype=np.uint8)).save(tmp_path / "sample.png")
    out = str(tmp_path / "out")
    info = export_model(
        cfg, out, ExportOptions(), sample_image=str(tmp_path / "sample.png"), batch_sizes=(1, 4)
    )
    assert sorted(os.listdir(out)) == ["anchors.npy", "detector.ts", "export.json", "network.ts"]
    assert json.load(open(os.path.join(out, "export.json"))) == json.loads(json.dumps(info))
    assert info["config_file"] is None and info["weights"] == cfg.MODEL.WEIGHTS
    assert sorted(info["network"]["max_abs_diff"]) == ["1", "4"]
    assert (info["input"]["height"], info["input"]["width"]) == (SIZE, SIZE)
    assert len(info["detector"]["max_abs_diff"]) == 3 and info["detector_not_exported"] is None
    network = torch.jit.load(os.path.join(out, "network.ts"))
    assert_network_matches(network, model, (2, 5), rtol=1e-4, atol=1e-4)


def test_build_detector_refuses_weights_of_another_model(tmp_path):
    calibrated_detector(str(tmp_path / "model.pth"))
    cfg = tiny_cfg()
    cfg.merge_from_list(
        ["MODEL.CONDCONV.NUM_EXPERTS", "3", "MODEL.WEIGHTS", str(tmp_path / "model.pth")]
    )
    with pytest.raises(ExportInputError, match="does not fit the model") as error:
        build_detector(cfg)
    assert "Use the config the checkpoint was trained with" in str(error.value)


def test_network_that_does_not_script_is_refused_with_the_reason(tmp_path):
    class Unscriptable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * len({id(x): x})  # id() does not compile

    options = ExportOptions(export_method="scripting")
    with pytest.raises(ExportInputError, match="does not script") as error:
        export_network(Unscriptable(), torch.zeros(1), str(tmp_path / "n.ts"), options)
    assert '.py", line' in str(error.value) and "--export-method tracing" in str(error.value)


@pytest.mark.parametrize("fmt", ["torch-export", "onnx"])
def test_network_that_does_not_export_is_refused_with_the_reason(fmt, tmp_path):
    if fmt == "onnx":
        for package in ("onnx", "onnxruntime", "onnxscript"):
            pytest.importorskip(package)

    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # a branch on the data: torch.export cannot guard it

    path = tmp_path / "network.out"
    with pytest.raises(ExportInputError, match="does not go through torch.export") as error:
        export_network(DataDependent(), torch.ones(2, 3), str(path), ExportOptions(fmt))
    # torch.export's own reason (for ONNX past the exporter's general advice), and the fix.
    assert "data-dependent" in str(error.value).split("\n")[1]
    assert "--onnx-exporter legacy" in str(error.value)
    assert not os.path.exists(path)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize(
    "options",
    [ExportOptions(), ExportOptions(format="onnx", onnx_exporter="legacy")],
    ids=["torchscript", "onnx-legacy"],
)
def test_export_with_narrow_experts(tmp_path, options, dtype):
    """MODEL.CONDCONV.EXPERT_DTYPE bfloat16 or int8: the written network computes what the
    converted model computes and stays within the experts' rounding of float32; TorchScript
    holds the narrow experts (ONNX's exporters fold their upcast into float32 initializers)."""
    model = calibrated_detector(str(tmp_path / "model.pth"))
    cfg = tiny_cfg()
    cfg.merge_from_list(
        ["MODEL.WEIGHTS", str(tmp_path / "model.pth"), "MODEL.CONDCONV.EXPERT_DTYPE", dtype]
    )
    info = export_model(cfg, str(tmp_path / "out"), options, batch_sizes=(1, 3))
    assert (
        max(d for diffs in info["network"]["max_abs_diff"].values() for d in diffs.values()) < 1e-3
    )
    if options.format == "torchscript":
        network = torch.jit.load(str(tmp_path / "out" / "network.ts"))
        assert any(p.dtype == getattr(torch, dtype) for p in network.parameters())
        # Against the float32 model: within the experts' rounding (int8: 127 steps a channel).
        tol = 0.05 if dtype == "bfloat16" else 0.15
        assert_network_matches(network, model, (2,), rtol=tol, atol=tol)

"""CondConv under TorchScript (script and trace) and ONNX export (opset 17, onnxruntime)."""
import warnings

import pytest
import torch
from torch import nn

from condconv_det.layers import CondConv2d, CondConvRouter, RoutedCondConv2d


class SharedRoutingBlock(nn.Module):
    """A block whose convs share one router, as in the official EfficientNet-CondConv code."""

    def __init__(self):
        super().__init__()
        self.router = CondConvRouter(8, num_experts=4)
        self.expand = CondConv2d(8, 16, 1, bias=False, num_experts=4)
        self.depthwise = CondConv2d(16, 16, 3, padding=1, groups=16, num_experts=4)
        self.project = CondConv2d(16, 8, 1, num_experts=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.router(x)
        y = self.expand(x, r).relu()
        y = self.depthwise(y, r).relu()
        return x + self.project(y, r)


def _models():
    torch.manual_seed(0)
    return {
        "routed3x3": RoutedCondConv2d(8, 12, 3, stride=2, padding=1, num_experts=4),
        "routed_same_reflect": RoutedCondConv2d(8, 8, 4, padding="same", padding_mode="reflect", num_experts=2),
        "routed_softmax": RoutedCondConv2d(8, 8, 1, num_experts=3, routing_activation="softmax", routing_temperature=5.0),
        "block": SharedRoutingBlock(),
    }


MODELS = list(_models())


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_script_matches_eager(name):
    model = _models()[name].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated upstream
        scripted = torch.jit.script(model)
    for batch in (1, 3):
        x = torch.randn(batch, 8, 9, 9)
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)
    # Scripted modules keep the clear errors.
    with pytest.raises(torch.jit.Error, match="expects input of shape"):
        scripted(torch.randn(1, 5, 9, 9))


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_trace_keeps_the_batch_dynamic(name):
    model = _models()[name].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(2, 8, 9, 9))
    for batch in (1, 2, 5):
        x = torch.randn(batch, 8, 9, 9)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_opset17_matches_eager_with_dynamic_batch(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = _models()[name].eval()
    path = str(tmp_path / f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 8, 9, 9),),
            path,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )
    proto = onnx.load(path)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 2, 5):
        x = torch.randn(batch, 8, 9, 9)
        (y,) = session.run(None, {"x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), model(x).detach(), rtol=1e-4, atol=1e-5)

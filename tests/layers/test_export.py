"""CondConv under torch.export (ExportedProgram, saved and loaded back), the dynamo ONNX exporter
(onnxruntime), TorchScript (script and trace) and the legacy ONNX exporter (opset 17), each with
a dynamic batch, compared with eager at batch sizes the export never saw."""

import io
import warnings

import pytest
import torch
from torch import nn
from torch.export import Dim

from condconv_det.layers import CondConv2d, CondConvRouter, RoutedCondConv2d, _condconv_fast


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
    normalized = SharedRoutingBlock()
    for m in normalized.modules():
        if isinstance(m, CondConv2d):
            m.normalize_kernel = True
    return {
        "routed3x3": RoutedCondConv2d(8, 12, 3, stride=2, padding=1, num_experts=4),
        "routed_same_reflect": RoutedCondConv2d(
            8, 8, 4, padding="same", padding_mode="reflect", num_experts=2
        ),
        "routed_softmax": RoutedCondConv2d(
            8, 8, 1, num_experts=3, routing_activation="softmax", routing_temperature=5.0
        ),
        "block": SharedRoutingBlock(),
        "normalized_block": normalized,
    }


MODELS = list(_models())
# Every path that takes any batch; "single" takes a batch of one only (see below).
BATCHED_PATHS = ["auto", "grouped", "matmul", "experts"]
TOL = dict(rtol=1e-4, atol=1e-5)


def _with_path(model: nn.Module, path: str) -> nn.Module:
    for m in model.modules():
        if isinstance(m, CondConv2d):
            m.path = path
    return model


def _export(model: nn.Module, *inputs: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with dim 0 of every input one dynamic batch, saved and loaded back."""
    batch = Dim("batch", min=1)
    program = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


def _onnx_session(onnx_program, path: str):
    ort = pytest.importorskip("onnxruntime")
    onnx_program.save(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named dynamic dimension
    return session


def _check_at_batches(run, model: nn.Module, batches=(1, 2, 5)):
    """``run(x)`` (the exported model) equals ``model(x)`` at each batch size."""
    for batch in batches:
        x = torch.randn(batch, 8, 9, 9)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), **TOL, msg=f"batch {batch}")


# Exported at batch 2: torch.export fixes example sizes of 0 and 1, as it does for nn.Conv2d.
@pytest.mark.parametrize("path", BATCHED_PATHS)
@pytest.mark.parametrize("name", MODELS)
def test_torch_export_matches_eager_with_dynamic_batch(name, path):
    model = _with_path(_models()[name].eval(), path)
    program = _export(model, torch.randn(2, 8, 9, 9))
    _check_at_batches(program.module(), model)


@pytest.mark.parametrize("name", ["routed3x3", "block"])
def test_exported_program_converts_to_onnx_with_dynamic_batch(name, tmp_path):
    """ "auto" records the batch-independent path under torch.export, so the saved program also
    lowers to ONNX (whose Conv needs a constant group count: no batch folded into groups)."""
    pytest.importorskip("onnxscript")
    model = _models()[name].eval()
    program = _export(model, torch.randn(2, 8, 9, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program, input_names=["x"], output_names=["y"], opset_version=18, verbose=False
        )
    session = _onnx_session(onnx_program, str(tmp_path / f"{name}.onnx"))
    _check_at_batches(lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), model)


def test_torch_export_with_separate_routing_input():
    torch.manual_seed(0)
    layer = CondConv2d(8, 6, 3, padding=1, num_experts=3, static_kernel=True).eval()
    program = _export(layer, torch.randn(2, 8, 9, 9), torch.rand(2, 3))
    for batch in (1, 2, 5):
        x, r = torch.randn(batch, 8, 9, 9), torch.rand(batch, 3)
        torch.testing.assert_close(program.module()(x, r), layer(x, r), **TOL)


def test_torch_export_in_training_mode(monkeypatch):
    """Eager training at batch 1 mixes large kernels with a custom autograd Function; the
    exported training graph, plain products, gives the same values and gradients."""
    monkeypatch.setattr(_condconv_fast, "TUNING", _condconv_fast.TUNING._replace(split_mix_numel=8))
    torch.manual_seed(0)
    layer = RoutedCondConv2d(8, 8, 3, padding=1, num_experts=4).train()
    program = _export(layer, torch.randn(2, 8, 9, 9))
    for batch in (1, 2, 5):
        x = torch.randn(batch, 8, 9, 9, requires_grad=True)
        got, want = program.module()(x), layer(x)
        torch.testing.assert_close(got, want, **TOL)
        (grad_got,) = torch.autograd.grad(got.square().sum(), x)
        (grad_want,) = torch.autograd.grad(want.square().sum(), x)
        torch.testing.assert_close(grad_got, grad_want, **TOL)


def test_single_path_exports_a_batch_of_one_and_refuses_a_dynamic_batch():
    torch.manual_seed(0)
    layer = RoutedCondConv2d(8, 8, 3, padding=1, num_experts=4, path="single").eval()
    x = torch.randn(1, 8, 9, 9)
    program = torch.export.export(layer, (x,))  # a static batch of one
    torch.testing.assert_close(program.module()(x), layer(x), **TOL)
    with pytest.raises(ValueError, match="path 'single' needs a batch of one.*path 'auto'"):
        _export(layer, torch.randn(2, 8, 9, 9))


# "auto" on every model, and the other paths that keep the batch dynamic in every graph.
GRAPH_CASES = [(name, "auto") for name in MODELS] + [("block", "matmul"), ("block", "experts")]


@pytest.mark.parametrize("name, path", GRAPH_CASES)
def test_dynamo_onnx_matches_eager_with_dynamic_batch(name, path, tmp_path):
    pytest.importorskip("onnxscript")
    model = _with_path(_models()[name].eval(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            model,
            (torch.randn(2, 8, 9, 9),),
            dynamo=True,
            opset_version=18,
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=({0: Dim("batch", min=1)},),
            verbose=False,
        )
    session = _onnx_session(onnx_program, str(tmp_path / f"{name}_{path}.onnx"))
    _check_at_batches(lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), model)


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


@pytest.mark.parametrize("name, path", GRAPH_CASES)
def test_torchscript_trace_keeps_the_batch_dynamic(name, path):
    model = _with_path(_models()[name].eval(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(2, 8, 9, 9))
    for batch in (1, 2, 5):
        x = torch.randn(batch, 8, 9, 9)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, path", GRAPH_CASES)
def test_legacy_onnx_opset17_matches_eager_with_dynamic_batch(name, path, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = _with_path(_models()[name].eval(), path)
    path = str(tmp_path / f"{name}_{path}.onnx")
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

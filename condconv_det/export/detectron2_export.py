"""``detectron2.export``'s tracing and scripting helpers, on detectron2 0.6 (whose
``detectron2.export`` does not import without caffe2, see
:func:`condconv_det._compat.import_detectron2_export`) as on upstream main."""

from .._compat import import_detectron2_export

__all__ = ["import_tracing_adapter", "import_scripting_with_instances"]


def import_tracing_adapter() -> type:
    """detectron2's ``TracingAdapter`` (``detectron2.export.flatten``): wraps a model whose
    inputs and outputs are lists, dicts and ``Instances`` so it traces as a tuple-of-tensors
    function, and rebuilds the structured outputs (``adapter.outputs_schema``)."""
    return import_detectron2_export("flatten").TracingAdapter


def import_scripting_with_instances():
    """detectron2's ``scripting_with_instances(model, fields)`` (``detectron2.export.torchscript``):
    ``torch.jit.script`` with ``Instances`` given static fields."""
    return import_detectron2_export("torchscript").scripting_with_instances

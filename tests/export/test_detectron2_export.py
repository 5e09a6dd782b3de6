"""condconv_det.export.detectron2_export: detectron2's tracing and scripting helpers import on
the installed detectron2 (0.6 lacks caffe2 for its own ``detectron2.export``)."""

from condconv_det.export import import_scripting_with_instances, import_tracing_adapter


def test_tracing_adapter_imports_on_this_detectron2():
    adapter = import_tracing_adapter()
    assert adapter.__name__ == "TracingAdapter"


def test_scripting_with_instances_imports_on_this_detectron2():
    assert callable(import_scripting_with_instances())

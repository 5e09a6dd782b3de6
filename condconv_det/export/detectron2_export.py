"""``detectron2.export``'s tracing and scripting helpers, on detectron2 0.6 as on upstream main.

detectron2 0.6's ``detectron2/export/__init__.py`` starts with ``from .api import *``, which
imports caffe2; PyTorch wheels have not shipped caffe2 since 2.0, so ``import
detectron2.export`` (and with it ``import detectron2.export.flatten``, since a submodule import
runs the package's ``__init__`` first) fails. The two modules needed here, ``flatten`` and
``torchscript``, do not use caffe2. When the package import fails, they are loaded under a
bare ``detectron2.export`` package that has their directory as its path and nothing else.
Upstream main guards the caffe2 import itself, and there the ordinary import is used.
"""

import importlib
import os
import sys
import types

__all__ = ["import_tracing_adapter", "import_scripting_with_instances"]


def _export_submodule(name: str) -> types.ModuleType:
    """``detectron2.export.<name>``, importing around a failing ``detectron2.export``."""
    try:
        importlib.import_module("detectron2.export")
    except ImportError as e:
        import detectron2

        if "caffe2" not in str(e):
            raise
        # A failed package import leaves no entry in sys.modules; put a bare package there so
        # that the submodules' relative imports (``from .torchscript_patch import ...``) work.
        package = types.ModuleType("detectron2.export")
        package.__path__ = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
        package.__doc__ = "detectron2.export without its caffe2 parts (see condconv_det.export)"
        sys.modules["detectron2.export"] = package
    return importlib.import_module(f"detectron2.export.{name}")


def import_tracing_adapter() -> type:
    """detectron2's ``TracingAdapter`` (``detectron2.export.flatten``): wraps a model whose
    inputs and outputs are lists, dicts and ``Instances`` so it traces as a tuple-of-tensors
    function, and rebuilds the structured outputs (``adapter.outputs_schema``)."""
    return _export_submodule("flatten").TracingAdapter


def import_scripting_with_instances():
    """detectron2's ``scripting_with_instances(model, fields)`` (``detectron2.export.torchscript``):
    ``torch.jit.script`` with ``Instances`` given static fields."""
    return _export_submodule("torchscript").scripting_with_instances

"""Export of condconv_det detectors with torch.export, to ONNX and to TorchScript
(``tools/export_model.py``).

- :class:`DenseDetectorNetwork`: the network of a dense detector (SSD, RetinaNet) without its
  post-processing, normalised images in, per-box class logits and box deltas out. It exports
  (torch.export, both ONNX exporters, TorchScript trace) with a dynamic batch dimension.
- :mod:`condconv_det.export.formats`: writing a module in each format and running the written
  file; ``UNCAPTURED_DETECTOR`` there says why the whole detector does not go through
  torch.export.
- :func:`dense_anchors`: the default boxes / anchors that the network's deltas refer to.
- :func:`import_tracing_adapter`: detectron2's ``TracingAdapter`` (whole detectors, with NMS),
  also on detectron2 0.6, whose ``detectron2.export`` fails to import without caffe2.
- :func:`check_close` and :func:`compare_detections`: exported model vs PyTorch.
"""

from .compare import ExportCheckError, check_close, compare_detections
from .detectron2_export import import_scripting_with_instances, import_tracing_adapter
from .network import DenseDetectorNetwork, dense_anchors, score_activation

__all__ = [
    "DenseDetectorNetwork",
    "ExportCheckError",
    "check_close",
    "compare_detections",
    "dense_anchors",
    "import_scripting_with_instances",
    "import_tracing_adapter",
    "score_activation",
]

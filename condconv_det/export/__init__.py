"""Export of condconv_det detectors with torch.export, to ONNX and to TorchScript
(``tools/export_model.py``).

- :func:`export_model`: export a detector with :class:`ExportOptions` and check every written
  file against PyTorch (:mod:`condconv_det.export.exporter`, which also writes the network and
  the whole detector alone: :func:`export_network`, :func:`export_detector`).
- :class:`DenseDetectorNetwork`: the network of a dense detector (SSD, RetinaNet) without its
  post-processing, normalised images in, per-box class logits and box deltas out. It exports
  (torch.export, both ONNX exporters, TorchScript trace) with a dynamic batch dimension.
- :mod:`condconv_det.export.formats`: writing a module in each format and running the written
  file; ``UNCAPTURED_DETECTOR`` there says why the whole detector does not go through
  torch.export.
- :func:`dense_anchors`: the default boxes / anchors that the network's deltas refer to.
- :func:`load_sample_image`, :func:`generated_image`, :func:`image_variants`: the images an
  export is traced and checked with.
- :func:`import_tracing_adapter`: detectron2's ``TracingAdapter`` (whole detectors, with NMS),
  also on detectron2 0.6, whose ``detectron2.export`` fails to import without caffe2.
- :func:`check_close`, :func:`compare_detections`, :func:`check_network` and
  :func:`check_detector`: exported model vs PyTorch.
"""

from .compare import (
    ExportCheckError,
    check_close,
    check_detector,
    check_network,
    compare_detections,
)
from .detectron2_export import import_scripting_with_instances, import_tracing_adapter
from .exporter import build_detector, export_detector, export_model, export_network
from .network import DenseDetectorNetwork, dense_anchors, score_activation
from .options import ExportInputError, ExportOptions
from .sample import generated_image, image_variants, load_sample_image

__all__ = [
    "DenseDetectorNetwork",
    "ExportCheckError",
    "ExportInputError",
    "ExportOptions",
    "build_detector",
    "check_close",
    "check_detector",
    "check_network",
    "compare_detections",
    "dense_anchors",
    "export_detector",
    "export_model",
    "export_network",
    "generated_image",
    "image_variants",
    "import_scripting_with_instances",
    "import_tracing_adapter",
    "load_sample_image",
    "score_activation",
]

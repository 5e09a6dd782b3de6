"""The network of a dense detector without post-processing, for a batch-dynamic export."""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes
from torch import nn

from condconv_det.modeling.meta_arch import SSD

__all__ = ["DenseDetectorNetwork", "dense_anchors", "score_activation"]


def _check_supported(detector: nn.Module) -> None:
    if not isinstance(detector, (SSD, RetinaNet)):
        raise TypeError(
            f"the network export supports the dense detectors SSD and RetinaNet (anchors + one "
            f"class and one box prediction per anchor); got {type(detector).__name__}. Use an "
            "SSD or RetinaNet config (MODEL.META_ARCHITECTURE)."
        )


def score_activation(detector: nn.Module) -> str:
    """How the detector turns class logits into scores: "softmax" over K + 1 logits (SSD, the
    last being background) or "sigmoid" of each of K logits (RetinaNet)."""
    _check_supported(detector)
    return "softmax" if isinstance(detector, SSD) else "sigmoid"


class DenseDetectorNetwork(nn.Module):
    """Images in, per-box class logits and box deltas out: a dense detector's (SSD's,
    RetinaNet's) normalisation, backbone and head, without anchors, decoding or NMS.

    Nothing in it depends on the batch size, so it exports (torch.export, ONNX, TorchScript
    trace) with a dynamic batch dimension: CondConv layers take their batch-independent
    "matmul" path when traced or exported.
    The per-image post-processing (top-k, NMS) of the full detector loops over the images in
    Python and is left out. Box i of the outputs is box i of :func:`dense_anchors`; decode with
    the detector's ``box2box_transform``.

    Args:
        detector: an SSD or RetinaNet in eval mode; its modules are shared, not copied.
    """

    def __init__(self, detector: DenseDetector):
        super().__init__()
        _check_supported(detector)
        self.backbone = detector.backbone
        self.head = detector.head
        self.head_in_features: List[str] = list(detector.head_in_features)
        self.size_divisibility: int = int(detector.backbone.size_divisibility)
        # SSD's logits include background (softmax); RetinaNet's do not (sigmoid).
        self.num_score_channels = detector.num_classes + (1 if isinstance(detector, SSD) else 0)
        self.register_buffer("pixel_mean", detector.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", detector.pixel_std.detach().clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            images: (N, 3, H, W) float, pixel values 0-255 in the config's ``INPUT.FORMAT``
                channel order, already resized as the detector's test-time mapper does.

        Returns:
            logits: (N, R, C) class logits of the R anchors; C = K + 1 for SSD (background
                last), K for RetinaNet.
            deltas: (N, R, 4) box deltas (dx, dy, dw, dh) of the anchors.
        """
        x = (images - self.pixel_mean) / self.pixel_std
        # As ImageList.from_tensors: the normalised image is padded with zeros at the bottom
        # and right up to a multiple of the backbone's size divisibility.
        if self.size_divisibility > 1:
            d = self.size_divisibility
            pad_h = (d - x.shape[-2] % d) % d
            pad_w = (d - x.shape[-1] % d) % d
            x = F.pad(x, [0, pad_w, 0, pad_h])
        features = self.backbone(x)
        logits, deltas = self.head([features[f] for f in self.head_in_features])
        logits = torch.cat([permute_to_N_HWA_K(t, self.num_score_channels) for t in logits], 1)
        deltas = torch.cat([permute_to_N_HWA_K(t, 4) for t in deltas], 1)
        return logits, deltas


@torch.no_grad()
def dense_anchors(detector: DenseDetector, images: torch.Tensor) -> torch.Tensor:
    """The anchors (RetinaNet) or default boxes (SSD) that :class:`DenseDetectorNetwork`'s
    outputs refer to, for images of this size.

    Args:
        detector: the SSD or RetinaNet.
        images: (N, 3, H, W) input of :class:`DenseDetectorNetwork`; only its size matters.

    Returns:
        (R, 4) float32 boxes, XYXY in the input's pixels, in the order of the network's outputs.
    """
    network = DenseDetectorNetwork(detector)
    x = (images[:1] - network.pixel_mean) / network.pixel_std
    d = network.size_divisibility
    if d > 1:
        x = F.pad(x, [0, (d - x.shape[-1] % d) % d, 0, (d - x.shape[-2] % d) % d])
    features = network.backbone(x)
    features = [features[f] for f in network.head_in_features]
    if isinstance(detector, SSD):
        boxes = detector.default_box_generator(features, x.shape[-2:])
    else:
        boxes = detector.anchor_generator(features)
    return Boxes.cat(boxes).tensor.float()

"""Checks of an exported model against the PyTorch model it came from."""

import logging
from typing import Callable, Dict, List, Sequence

import torch
from detectron2.structures import Instances
from torch import nn

from .sample import image_variants

__all__ = [
    "ExportCheckError",
    "check_close",
    "check_detector",
    "check_network",
    "compare_detections",
]

logger = logging.getLogger(__name__)


class ExportCheckError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes."""


def check_close(name: str, reference: torch.Tensor, exported: torch.Tensor, atol: float) -> float:
    """The max abs difference of two outputs; raises if it is above the tolerance or not finite.

    The tolerance is ``atol`` times the output's largest magnitude when that is above 1: float32
    rounding grows with the values (logits of tens, boxes of hundreds of pixels), and an
    absolute bound would fail large-valued outputs for rounding alone.

    Args:
        name: the output's name, for the message.
        reference: PyTorch's output.
        exported: the exported model's output, same shape.
        atol: the tolerance for outputs of magnitude at most 1.

    Returns:
        the max abs difference (0 for empty outputs).
    """
    exported = torch.as_tensor(exported)
    if tuple(reference.shape) != tuple(exported.shape):
        raise ExportCheckError(
            f"{name}: the exported model's output has shape {tuple(exported.shape)}, PyTorch's "
            f"{tuple(reference.shape)}"
        )
    if reference.numel() == 0:
        return 0.0
    reference = reference.detach().double()
    diff = (reference - exported.detach().double()).abs().max().item()
    tolerance = atol * max(1.0, reference.abs().max().item())
    if not diff <= tolerance:  # also catches NaN
        raise ExportCheckError(
            f"{name}: the exported model differs from PyTorch by {diff:.3g} (max abs), above the "
            f"tolerance {tolerance:.3g} (--atol {atol:g} times the output's largest magnitude, "
            "at least 1). If the difference is rounding in a deep or large-valued model, raise "
            "--atol; otherwise the export is wrong."
        )
    return diff


def compare_detections(reference: Instances, exported: Instances, atol: float) -> Dict[str, float]:
    """Compares two detectors' outputs for one image, independent of the order of detections.

    Detections of (nearly) equal score come out of NMS in an order that depends on rounding and
    on the NMS algorithm (the eager one loops over classes on large inputs, the traced one offsets
    boxes per class), so detections are matched, not compared row by row: each reference
    detection, best first, takes the unmatched exported one of the same class with a score within
    ``atol`` whose box is closest.

    Args:
        reference: PyTorch's detections (``pred_boxes``, ``scores``, ``pred_classes``).
        exported: the exported model's.
        atol: score tolerance; boxes, in pixels, are allowed ``atol`` times their largest
            coordinate (at least ``atol``).

    Returns:
        {"detections": count, "scores": max abs score difference, "boxes": max abs coordinate
        difference of matched boxes}.
    """
    n = len(reference)
    if len(exported) != n:
        raise ExportCheckError(
            f"detections: the exported model finds {len(exported)} objects, PyTorch {n}"
        )
    if n == 0:
        return {"detections": 0, "scores": 0.0, "boxes": 0.0}
    ref_scores = reference.scores.double()
    out_scores = torch.as_tensor(exported.scores).double()
    score_diff = check_close(
        "detections' scores (sorted)",
        ref_scores.sort(descending=True).values,
        out_scores.sort(descending=True).values,
        atol,
    )
    ref_boxes = reference.pred_boxes.tensor.double()
    out_boxes = torch.as_tensor(exported.pred_boxes.tensor).double()
    box_atol = atol * max(1.0, ref_boxes.abs().max().item())  # as check_close
    out_classes = torch.as_tensor(exported.pred_classes)
    taken = torch.zeros(n, dtype=torch.bool)
    box_diff = 0.0
    for i in ref_scores.argsort(descending=True).tolist():
        candidates = (
            ~taken
            & (out_classes == reference.pred_classes[i])
            & ((out_scores - ref_scores[i]).abs() <= atol)
        )
        distance = (out_boxes - ref_boxes[i]).abs().max(dim=1).values
        distance[~candidates] = float("inf")
        j = int(distance.argmin())
        if not distance[j] <= box_atol:
            raise ExportCheckError(
                f"detections: PyTorch's detection {i} (class {int(reference.pred_classes[i])}, "
                f"score {ref_scores[i]:.4f}, box {[round(v, 1) for v in ref_boxes[i].tolist()]}) "
                f"has no counterpart in the exported model's output within {box_atol:.3g} px"
            )
        taken[j] = True
        box_diff = max(box_diff, distance[j].item())
    return {"detections": n, "scores": score_diff, "boxes": box_diff}


def check_network(
    network: nn.Module,
    run: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    image: torch.Tensor,
    batch_sizes: Sequence[int],
    atol: float,
) -> Dict[str, Dict[str, float]]:
    """The exported network against PyTorch at each batch size, on :func:`image_variants` of
    ``image`` (examples that differ, so that mixing them up shows).

    Args:
        network: the PyTorch :class:`~condconv_det.export.DenseDetectorNetwork`.
        run: runs the exported file: images in, (logits, deltas) out.
        image: (3, H, W) sample image.
        batch_sizes: where to check.
        atol: as :func:`check_close`.

    Returns:
        {batch size (str): {"logits": max abs difference, "deltas": ...}}.

    Raises:
        ExportCheckError: an output that differs more than ``atol`` allows.
    """
    results = {}
    for batch in batch_sizes:
        images = image_variants(image, batch)
        with torch.no_grad():
            reference = network(images)
        exported = run(images)
        results[str(batch)] = {
            name: check_close(f"network {name}, batch {batch}", ref, out, atol)
            for name, ref, out in zip(("logits", "deltas"), reference, exported)
        }
        logger.info("network, batch %d: %s", batch, results[str(batch)])
    return results


def check_detector(
    model: nn.Module, run: Callable[[torch.Tensor], Instances], image: torch.Tensor, atol: float
) -> List[Dict[str, float]]:
    """The exported whole detector against PyTorch, on three :func:`image_variants` of
    ``image``, one image per call.

    Args:
        model: the PyTorch detector, in eval mode.
        run: runs the exported file on one (3, H, W) image and returns its Instances.
        image: (3, H, W) sample image.
        atol: as :func:`compare_detections`.

    Returns:
        :func:`compare_detections`'s result per image.

    Raises:
        ExportCheckError: naming the image whose detections differ.
    """
    results = []
    for index, variant in enumerate(image_variants(image, 3)):
        with torch.no_grad():
            reference = model([{"image": variant}])[0]["instances"]
        try:
            results.append(compare_detections(reference, run(variant), atol))
        except ExportCheckError as e:
            raise ExportCheckError(f"detector, image {index}: {e}") from e
        logger.info("detector, image %d: %s", index, results[-1])
    return results

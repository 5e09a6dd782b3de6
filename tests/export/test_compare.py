"""condconv_det.export.compare: the tolerance of output comparisons, detections matched as
sets, and the checks of an exported network and detector against PyTorch."""

import pytest
import torch
from detectron2.structures import Boxes, Instances

from condconv_det.export import (
    ExportCheckError,
    check_close,
    check_detector,
    check_network,
    compare_detections,
)


def test_check_close_fails_above_the_tolerance():
    ref = torch.tensor([0.5, -0.25])
    assert check_close("x", ref, ref + 1e-4, atol=1e-3) == pytest.approx(1e-4, rel=1e-3)
    with pytest.raises(
        ExportCheckError, match="x: the exported model differs from PyTorch by 0.002"
    ):
        check_close("x", ref, ref + 2e-3, atol=1e-3)
    # Relative above magnitude 1: 0.05 off on values of 100 is within 1e-3.
    assert check_close("x", ref * 400, ref * 400 + 0.05, atol=1e-3) == pytest.approx(0.05, rel=1e-3)
    with pytest.raises(ExportCheckError, match="shape"):
        check_close("x", ref, ref[:1], atol=1e-3)
    with pytest.raises(ExportCheckError):
        check_close("x", ref, torch.tensor([float("nan"), 0.0]), atol=1e-3)


def test_compare_detections_ignores_order_but_not_content():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]])
    ref = Instances(
        (32, 32),
        pred_boxes=Boxes(boxes),
        scores=torch.tensor([0.9, 0.5, 0.5]),
        pred_classes=torch.tensor([0, 1, 2]),
    )
    order = torch.tensor([0, 2, 1])  # the two tied detections swapped
    out = Instances((32, 32), pred_boxes=Boxes(boxes[order] + 1e-4), scores=ref.scores[order],
                    pred_classes=ref.pred_classes[order])  # fmt: skip
    result = compare_detections(ref, out, atol=1e-3)
    assert result["detections"] == 3 and result["boxes"] == pytest.approx(1e-4, rel=1e-2)
    wrong_class = Instances((32, 32), pred_boxes=out.pred_boxes, scores=out.scores,
                            pred_classes=torch.tensor([0, 1, 1]))  # fmt: skip
    with pytest.raises(ExportCheckError, match="no counterpart"):
        compare_detections(ref, wrong_class, atol=1e-3)
    with pytest.raises(ExportCheckError, match="finds 2 objects, PyTorch 3"):
        compare_detections(ref, out[:2], atol=1e-3)


class PerExample(torch.nn.Module):
    """A stand-in network: (N, 3, H, W) in, (N, R, C) logits and (N, R, 4) deltas out."""

    def forward(self, images):
        flat = images.flatten(2).transpose(1, 2)  # (N, H*W, 3)
        return flat[..., :2] / 255, torch.cat([flat, flat[..., :1]], dim=2) / 255


def test_check_network_compares_every_batch_size_and_catches_mixed_up_examples():
    network = PerExample()
    image = torch.rand(3, 4, 5) * 255
    diffs = check_network(network, network, image, [1, 3], atol=1e-6)
    assert set(diffs) == {"1", "3"}
    assert all(d == {"logits": 0.0, "deltas": 0.0} for d in diffs.values())

    def first_example_everywhere(images):  # an export that routes the batch as its first image
        return network(images[:1].expand_as(images))

    check_network(network, first_example_everywhere, image, [1], atol=1e-6)
    with pytest.raises(ExportCheckError, match="network logits, batch 2"):
        check_network(network, first_example_everywhere, image, [1, 2], atol=1e-6)


def test_check_detector_names_the_image_that_differs():
    def detect(image, shift=0.0):
        box = torch.tensor([[1.0, 2.0, 30.0, 40.0]]) + image.mean() / 255 + shift
        return Instances(
            (64, 64),
            pred_boxes=Boxes(box),
            scores=torch.tensor([0.8]),
            pred_classes=torch.tensor([1]),
        )

    def model(inputs):
        return [{"instances": detect(inputs[0]["image"])}]

    image = torch.rand(3, 8, 8) * 255
    results = check_detector(model, detect, image, atol=1e-4)
    assert results == [{"detections": 1, "scores": 0.0, "boxes": 0.0}] * 3
    calls = []

    def off_on_the_third(image):
        calls.append(image)
        return detect(image, shift=1.0 if len(calls) == 3 else 0.0)

    with pytest.raises(ExportCheckError, match="detector, image 2: .*no counterpart"):
        check_detector(model, off_on_the_third, image, atol=1e-4)

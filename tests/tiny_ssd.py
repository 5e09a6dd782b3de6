"""A tiny shapes SSD-CondConv for the tests that run a whole detector (export, predictor), with
batch-norm statistics that make its scores and boxes vary between images."""

import os

import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from condconv_det.config import get_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "shapes", "ssd_condconv_MNv1.yaml")
SIZE = 64
TINY = [
    "MODEL.MOBILENET.WIDTH_MULT", "0.25",
    "MODEL.CONDCONV.NUM_EXPERTS", "2",
    "INPUT.SSD.SIZE", str(SIZE),
]  # fmt: skip


def tiny_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + ["MODEL.DEVICE", "cpu"])
    return cfg


def calibrated_detector(path: str) -> torch.nn.Module:
    """The tiny SSD with random weights, in eval mode, saved to ``path`` as tools/train_net.py
    saves a model. Batch-norm statistics are set from one random batch: with untrained,
    independently drawn experts the mixed kernels shrink the features layer after layer to
    ~1e-14, all scores tie and a detection comparison would only test tie-breaking."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running stats = this batch's
    model.train()
    with torch.no_grad():
        images = (torch.rand(4, 3, SIZE, SIZE) * 255 - model.pixel_mean) / model.pixel_std
        features = model.backbone(images)
        model.head([features[f] for f in model.head_in_features])
    model.eval()
    torch.save({"model": model.state_dict(), "iteration": 2}, path)
    return model


def random_images(batch: int, seed: int) -> torch.Tensor:
    """(batch, 3, SIZE, SIZE) images, 0-255, smooth enough to look like something."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=g) * 255
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def reference_predictions(model, images: torch.Tensor):
    """Class logits (N, R, K + 1) and deltas (N, R, 4) computed by the detector's own code."""
    with torch.no_grad():
        batched = model.preprocess_image([{"image": x} for x in images])
        features = model.backbone(batched.tensor)
        features = [features[f] for f in model.head_in_features]
        logits, deltas = model._transpose_dense_predictions(
            model.head(features), [model.num_classes + 1, 4]
        )
    return torch.cat(logits, 1), torch.cat(deltas, 1)


def assert_network_matches(network, model, batches, rtol, atol):
    """The exported network's logits and deltas equal the detector's own at each batch size."""
    for batch in batches:
        images = random_images(batch, seed=batch)
        with torch.no_grad():
            logits, deltas = network(images)
        ref_logits, ref_deltas = reference_predictions(model, images)
        assert logits.shape == ref_logits.shape == (batch, ref_logits.shape[1], 6)
        torch.testing.assert_close(logits, ref_logits, rtol=rtol, atol=atol)
        torch.testing.assert_close(deltas, ref_deltas, rtol=rtol, atol=atol)

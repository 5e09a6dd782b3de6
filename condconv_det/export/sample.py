"""The images an export is traced and checked with: a sample image as the detector takes it,
generated when none is given, and variants of it that make a batch whose examples differ."""

from typing import Optional

import numpy as np
import torch
from detectron2.data import transforms as T

from condconv_det.analysis import eval_image_size
from condconv_det.data import build_test_augmentation, read_image

__all__ = ["generated_image", "image_variants", "load_sample_image"]


def generated_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic image with structure at several scales (a colour gradient, rectangles,
    discs), so that routing, scores and boxes vary as they do on a real image.

    Args:
        height, width: its size in pixels.
        seed: the generator's seed; the same seed gives the same image.

    Returns:
        (height, width, 3) uint8.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    start, end = rng.uniform(40, 215, size=(2, 3))
    t = (x / max(width - 1, 1) + y / max(height - 1, 1))[..., None] / 2
    image = start * (1 - t) + end * t
    for _ in range(6):
        colour = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.08, 0.25) * min(height, width)
        if rng.random() < 0.5:
            mask = (np.abs(y - cy) < r) & (np.abs(x - cx) < r * rng.uniform(0.5, 1.5))
        else:
            mask = (y - cy) ** 2 + (x - cx) ** 2 < r**2
        image[mask] = colour
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def load_sample_image(cfg, path: Optional[str] = None) -> torch.Tensor:
    """The sample image as the detector takes it, through the test data loader's transforms.

    Args:
        cfg: the detector's config (``INPUT.FORMAT`` and the test size).
        path: an image file, read as the data loaders read images; None for
            :func:`generated_image` at the size the detector is analysed at
            (:func:`~condconv_det.analysis.eval_image_size`).

    Returns:
        (3, H, W) float32, pixel values 0-255 in ``INPUT.FORMAT`` order, resized.
    """
    if path is None:
        image = generated_image(*eval_image_size(cfg))
    else:
        image = read_image(path, cfg.INPUT.FORMAT)
    image = T.AugInput(image)
    T.AugmentationList(build_test_augmentation(cfg))(image)
    return torch.as_tensor(np.ascontiguousarray(image.image.transpose(2, 0, 1))).float()


def image_variants(image: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` different images made from one: a batch whose examples route differently, so
    that an exported model that mixes up the examples of a batch cannot go unnoticed.

    Args:
        image: (3, H, W), pixel values 0-255.
        count: how many; the first is ``image`` itself, then its mirror image, a darker copy,
            then noisy copies (a fixed seed: the same variants every call).

    Returns:
        (count, 3, H, W).
    """
    generator = torch.Generator().manual_seed(0)
    variants = [image, image.flip(-1), (image * 0.7 + 40).clamp(0, 255)]
    while len(variants) < count:
        noise = torch.randn(image.shape, generator=generator) * 20
        variants.append((image + noise).clamp(0, 255))
    return torch.stack(variants[:count])

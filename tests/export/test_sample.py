"""condconv_det.export.sample: the sample image as the detector takes it, generated or read,
and the batch of differing variants an export is checked with."""

import numpy as np
import torch
from PIL import Image

from condconv_det.export import generated_image, image_variants, load_sample_image
from tests.tiny_ssd import SIZE, tiny_cfg


def test_sample_image_is_read_and_resized_as_at_test_time(tmp_path):
    path = str(tmp_path / "sample.png")
    pixels = np.zeros((40, 90, 3), dtype=np.uint8)
    pixels[..., 0] = 200  # red in the file
    Image.fromarray(pixels).save(path)
    image = load_sample_image(tiny_cfg(), path)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32  # SSD's square resize
    assert image[0].min() == 200 and image[1:].max() == 0  # RGB, the config's INPUT.FORMAT
    generated = load_sample_image(tiny_cfg())
    assert generated.shape == (3, SIZE, SIZE) and generated.std() > 10


def test_generated_image_is_structured_and_reproducible():
    image = generated_image(48, 80)
    assert image.shape == (48, 80, 3) and image.dtype == np.uint8
    assert np.array_equal(image, generated_image(48, 80))
    assert not np.array_equal(image, generated_image(48, 80, seed=1))
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100  # not flat


def test_image_variants_differ_from_each_other_and_keep_the_range():
    image = torch.from_numpy(generated_image(16, 24).transpose(2, 0, 1)).float()
    variants = image_variants(image, 5)
    assert variants.shape == (5, 3, 16, 24)
    assert torch.equal(variants[0], image)
    assert all(not torch.equal(variants[i], variants[j]) for i in range(5) for j in range(i))
    assert variants.min() >= 0 and variants.max() <= 255
    assert torch.equal(image_variants(image, 5), variants)  # the same batch every call
    assert torch.equal(image_variants(image, 2), variants[:2])

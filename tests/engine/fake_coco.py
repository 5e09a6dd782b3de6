"""A tiny fake COCO directory (``coco/annotations`` + ``coco/{train,val}2017``) for tests.

The JSON holds COCO's 80 categories with their real, non-contiguous ids, so detectron2's builtin
``coco_2017_*`` registrations (and their id mapping) are exercised as with the real dataset.
"""

import json
import pathlib
from typing import Dict

import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from PIL import Image

THING_CATEGORIES = [c for c in COCO_CATEGORIES if c["isthing"]]


def make_fake_coco(
    root, num_train: int = 4, num_val: int = 2, size=(96, 128), seed: int = 0, categories=None
) -> Dict[str, str]:
    """Writes ``root/coco`` like COCO 2017 (instances JSON, JPEG images); returns the JSON paths.

    ``categories``: ``[{"id": ..., "name": ...}, ...]`` in place of COCO's; objects are drawn
    from the first five."""
    rng = np.random.default_rng(seed)
    coco = pathlib.Path(root) / "coco"
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    if categories is None:
        categories = [{"id": c["id"], "name": c["name"]} for c in THING_CATEGORIES]
    categories = [dict(c, supercategory="thing") for c in categories]
    paths = {}
    for split, count in (("train2017", num_train), ("val2017", num_val)):
        (coco / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            h, w = size
            pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            image_id = 1000 * (split == "val2017") + i + 1
            for _ in range(rng.integers(1, 4)):
                bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                pixels[y : y + bh, x : x + bw] = rng.integers(120, 256, 3)
                category = categories[rng.integers(0, min(5, len(categories)))]  # a few classes
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category["id"],
                        "bbox": [x, y, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                        "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
                    }
                )
            name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(coco / split / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        path = coco / "annotations" / f"instances_{split}.json"
        path.write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
        paths[split] = str(path)
    return paths

"""condconv_det.visualization: an image file drawn with the predictor's detections above the
threshold, at its own size, in the format of the output's name."""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from condconv_det.config import get_cfg
from condconv_det.visualization import draw_image_file

pytest.importorskip("cv2", reason="detectron2's Visualizer needs OpenCV (opencv-python-headless)")


class FixedPredictor:
    """Two detections on any image: one of score 0.9 on the left, one of 0.3 on the right."""

    def __init__(self, image_format: str = "BGR"):
        self.cfg = get_cfg()
        self.cfg.INPUT.FORMAT = image_format
        self.seen = []

    def __call__(self, image):
        self.seen.append(image)
        height, width = image.shape[:2]
        boxes = [[2.0, 2.0, width / 2 - 2, height - 2], [width / 2 + 2, 2.0, width - 2, height - 2]]
        return Instances(
            (height, width),
            pred_boxes=Boxes(torch.tensor(boxes)),
            scores=torch.tensor([0.9, 0.3]),
            pred_classes=torch.tensor([0, 1]),
        )


def test_detections_above_the_threshold_are_drawn_on_the_image(tmp_path):
    image = np.full((60, 100, 3), 128, dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    predictor = FixedPredictor("BGR")
    metadata = MetadataCatalog.get("condconv_visualization_test").set(thing_classes=["a", "b"])
    out = tmp_path / "drawn.jpg"
    drawn = draw_image_file(predictor, str(tmp_path / "in.png"), str(out), 0.5, metadata)
    assert drawn.scores.tolist() == [pytest.approx(0.9)]
    assert predictor.seen[0].shape == (60, 100, 3)  # read in the config's format
    with Image.open(out) as written:
        assert written.format == "JPEG" and written.size == (100, 60)
        pixels = np.asarray(written.convert("RGB")).astype(int)
    # The left half carries a box and its label; the right half (score 0.3) is untouched, up to
    # the JPEG's rounding. Drawing ends near column 50, and the JPEG's 16-pixel blocks (chroma
    # subsampled) carry its ringing, whose size depends on the box's random colour, up to
    # column 63: the untouched check starts at the next block.
    assert np.abs(pixels[:, :45] - 128).max() > 40
    assert np.abs(pixels[:, 64:] - 128).max() < 10


def test_an_unreadable_image_is_an_oserror_naming_it(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(OSError, match="broken.png"):
        draw_image_file(
            FixedPredictor(), str(tmp_path / "broken.png"), str(tmp_path / "o.png"), 0.5, None
        )
    assert not (tmp_path / "o.png").exists()

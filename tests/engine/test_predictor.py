"""condconv_det.engine.predictor: the predictor's detections are the evaluation's (same
preprocessing, loaded weights, boxes in the image's pixels), it refuses weights of another
model, and a display threshold lowers the model's own where it is higher."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from condconv_det.checkpoint import CheckpointMismatchError
from condconv_det.config import get_cfg
from condconv_det.data import read_image
from condconv_det.engine.predictor import Predictor, lower_score_thresholds
from condconv_det.engine.trainer import build_mapper
from tests.tiny_ssd import CONFIG
from tests.tiny_ssd import tiny_cfg as tiny_ssd_cfg


def tiny_cfg(*opts):
    """The tiny SSD, random weights, every detection kept (a random model's scores are low)."""
    cfg = tiny_ssd_cfg()
    cfg.merge_from_list(["MODEL.SSD.SCORE_THRESH_TEST", "0.0", *opts])
    return cfg


def test_predictions_equal_evaluation_with_loaded_weights(tmp_path):
    """The preprocessing is the evaluation loader's (a 90x120 image becomes SSD's 64x64 square)
    and MODEL.WEIGHTS is loaded: same detections as the evaluated model."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    reference = build_model(cfg).eval()
    weights = str(tmp_path / "model.pth")
    torch.save({"model": reference.state_dict()}, weights)

    image = np.full((90, 120, 3), 200, dtype=np.uint8)
    image[20:45, 30:60] = (30, 60, 200)
    Image.fromarray(image).save(tmp_path / "x.png")
    record = {"file_name": str(tmp_path / "x.png"), "height": 90, "width": 120, "image_id": 0}
    with torch.no_grad():
        expected = reference([build_mapper(cfg, is_train=False)(record)])[0]["instances"]

    cfg.MODEL.WEIGHTS = weights
    predictor = Predictor(cfg)
    got = predictor(read_image(record["file_name"], cfg.INPUT.FORMAT))
    assert len(expected) > 0 and got.image_size == (90, 120)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)


def test_weights_of_another_model_are_refused(tmp_path):
    torch.manual_seed(0)
    weights = str(tmp_path / "model.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, weights)
    with pytest.raises(CheckpointMismatchError, match="does not fit the model"):
        Predictor(tiny_cfg("MODEL.CONDCONV.NUM_EXPERTS", "3", "MODEL.WEIGHTS", weights))


def test_low_threshold_lowers_the_models_threshold():
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    assert cfg.MODEL.SSD.SCORE_THRESH_TEST == 0.01
    lower_score_thresholds(cfg, 0.5)  # above: the model keeps it, the caller filters
    assert cfg.MODEL.SSD.SCORE_THRESH_TEST == 0.01
    lower_score_thresholds(cfg, 0.001)
    assert cfg.MODEL.SSD.SCORE_THRESH_TEST == 0.001
    assert cfg.MODEL.RETINANET.SCORE_THRESH_TEST == 0.001

"""condconv_det.engine.predictor: the predictor's detections are the evaluation's (same
preprocessing, loaded weights, boxes in the image's pixels), it refuses weights of another
model, a display threshold lowers the model's own where it is higher, and
MODEL.CONDCONV.EXPERT_DTYPE stores the experts in bfloat16."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from condconv_det.checkpoint import CheckpointMismatchError
from condconv_det.config import get_cfg, store_experts_for_inference
from condconv_det.data import read_image
from condconv_det.engine.predictor import Predictor, lower_score_thresholds
from condconv_det.engine.trainer import build_mapper
from condconv_det.layers import CondConv2d
from tests.tiny_ssd import CONFIG, calibrated_detector, random_images
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


@pytest.mark.parametrize("narrow", ["bfloat16", "int8"])
def test_narrow_experts_give_the_float32_detections(tmp_path, narrow):
    """MODEL.CONDCONV.EXPERT_DTYPE bfloat16 or int8: the experts are stored so once the weights
    are loaded, and the detections stay those of the float32 model up to that rounding."""
    weights = str(tmp_path / "model.pth")
    calibrated_detector(weights)
    image = (random_images(1, seed=0)[0].permute(1, 2, 0)).to(torch.uint8).numpy()
    predictors = {
        dtype: Predictor(tiny_cfg("MODEL.WEIGHTS", weights, "MODEL.CONDCONV.EXPERT_DTYPE", dtype))
        for dtype in ("float32", narrow)
    }
    for dtype, predictor in predictors.items():
        experts = [m for m in predictor.model.modules() if isinstance(m, CondConv2d)]
        assert experts and all(m.weight.dtype == getattr(torch, dtype) for m in experts)
    want, got = (predictors[d](image) for d in ("float32", narrow))
    assert len(want) > 0
    torch.testing.assert_close(got.scores[:10], want.scores[:10], rtol=0, atol=1e-2)


def test_expert_dtype_is_checked():
    with pytest.raises(ValueError, match="MODEL.CONDCONV.EXPERT_DTYPE must be one of"):
        Predictor(tiny_cfg("MODEL.CONDCONV.EXPERT_DTYPE", "float16"))
    model = build_model(tiny_cfg())
    with pytest.raises(ValueError, match="EXPERT_DTYPE 'bfloat16' is for inference only"):
        store_experts_for_inference(model, tiny_cfg("MODEL.CONDCONV.EXPERT_DTYPE", "bfloat16"))
    assert store_experts_for_inference(model, tiny_cfg()) is model  # float32: left as it is

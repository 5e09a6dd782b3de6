"""A detector on single images, preprocessed as in evaluation (``tools/demo.py``)."""

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances

from condconv_det.checkpoint import load_weights_exact
from condconv_det.config import store_experts_for_inference
from condconv_det.data import build_test_augmentation

__all__ = ["Predictor", "lower_score_thresholds"]

# The score-threshold keys of the meta-architectures this project builds (SSD, RetinaNet, R-CNN).
SCORE_THRESH_KEYS = (
    ("SSD", "SCORE_THRESH_TEST"),
    ("RETINANET", "SCORE_THRESH_TEST"),
    ("ROI_HEADS", "SCORE_THRESH_TEST"),
)


class Predictor:
    """One image in, the model's detections out, preprocessed as in evaluation.

    Like detectron2's ``DefaultPredictor``, but with the transforms of the project's test data
    loader (:func:`~condconv_det.data.build_test_augmentation`), the image as the mappers give
    it (uint8), and the weights loaded with
    :func:`~condconv_det.checkpoint.load_weights_exact` (so ``MODEL.WEIGHTS`` may also be a
    static checkpoint to upcycle, and a checkpoint of another model is refused), then its
    experts stored in ``MODEL.CONDCONV.EXPERT_DTYPE``.

    Args:
        cfg: a condconv_det config; ``MODEL.WEIGHTS`` "" keeps the random initialization.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()  # build_model may modify it
        self.model = build_model(self.cfg)
        self.model.eval()
        load_weights_exact(self.model, cfg.MODEL.WEIGHTS)
        store_experts_for_inference(self.model, cfg)
        self.augmentations = T.AugmentationList(build_test_augmentation(cfg))

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Instances:
        """
        Args:
            image: ``(H, W, C)`` uint8, in ``cfg.INPUT.FORMAT`` (as
                :func:`condconv_det.data.read_image` returns it).

        Returns:
            Instances of image size ``(H, W)``: ``pred_boxes`` (XYXY, in the image's pixels),
            ``scores`` and ``pred_classes``, on the CPU.
        """
        height, width = image.shape[:2]
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        inputs = {"image": tensor, "height": height, "width": width}
        return self.model([inputs])[0]["instances"].to("cpu")


def lower_score_thresholds(cfg, threshold: float) -> None:
    """Lowers the model's test score thresholds to ``threshold`` where they are higher, so that
    a display threshold below a config's threshold shows the extra detections. Above it, the
    model keeps the config's threshold and the caller filters: the detections shown are then
    the evaluation's that score above the threshold.

    Args:
        cfg: a config, not frozen; changed in place.
        threshold: the lowest score to be shown.
    """
    for node, key in SCORE_THRESH_KEYS:
        sub = cfg.MODEL.get(node, None)
        if sub is not None and key in sub and sub[key] > threshold:
            sub[key] = threshold

"""SSD (Liu et al., ECCV 2016) as a detectron2 meta-architecture, registered as "SSD"."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import batched_nms, cat, ciou_loss, diou_loss
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, smooth_l1_loss
from torch import nn

from condconv_det.config import check_condconv_config, check_ssd_config, checked_config

from .default_boxes import DefaultBoxGenerator
from .ssd_head import SSDHead
from .ssd_matcher import SSDMatcher

__all__ = ["BOX_REG_LOSSES", "SSD", "hard_negative_mining"]

# Losses of the box regression (MODEL.SSD.BBOX_REG_LOSS_TYPE).
BOX_REG_LOSSES = ("smooth_l1", "giou", "diou", "ciou")


def hard_negative_mining(
    losses: torch.Tensor,
    positive: torch.Tensor,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 0,
) -> torch.Tensor:
    """SSD's hard-negative mining (Liu et al. 2016, sec. 2.2 "Hard negative mining").

    In each image, the negatives (not ``positive``) with the highest classification loss are kept,
    ``max(floor(neg_pos_ratio * P), min_negatives)`` of them for P positives, or all of them if
    there are fewer. Equal losses go to the lower index.

    Args:
        losses: (N, R) classification loss of every default box.
        positive: (N, R) bool, the positive default boxes.
        neg_pos_ratio: negatives kept per positive (the paper: 3).
        min_negatives: negatives kept at least per image.

    Returns:
        (N, R) bool, the negatives kept.
    """
    num_pos = positive.sum(dim=1, keepdim=True)
    num_available = (~positive).sum(dim=1, keepdim=True)
    num_neg = torch.floor(num_pos * float(neg_pos_ratio)).long().clamp(min=min_negatives)
    num_neg = torch.minimum(num_neg, num_available)
    negative_losses = losses.detach().masked_fill(positive, float("-inf"))
    order = negative_losses.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank < num_neg


@META_ARCH_REGISTRY.register()
class SSD(DenseDetector):
    """SSD: a backbone with several feature levels (e.g. :class:`SSDBackbone`), a class and a box
    predictor per level, default boxes matched to the ground truth, softmax classification with
    hard-negative mining, smooth-L1 box regression, and per-class NMS.

    The input is what detectron2's mappers give (SSD's are fixed squares, from
    ``SSDDatasetMapper``); images are normalised and batched with ``ImageList.from_tensors`` and
    the default boxes follow the actual feature and image sizes, so other sizes work too.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[List[str]] = None,
        default_box_generator: DefaultBoxGenerator,
        box2box_transform: Box2BoxTransform,
        matcher: SSDMatcher,
        num_classes: int,
        neg_pos_ratio: float = 3.0,
        min_negatives_per_image: int = 3,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 1.0,
        test_score_thresh: float = 0.01,
        test_topk_candidates: int = 400,
        test_nms_thresh: float = 0.45,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        """
        Args:
            backbone: any detectron2 backbone.
            head: maps the feature list to (logits, deltas) lists, each level
                (N, A_k (K + 1), H_k, W_k) and (N, A_k 4, H_k, W_k); see :class:`SSDHead`.
            head_in_features: backbone features for the head; None: all, by stride.
            default_box_generator: makes the default boxes of the head's levels.
            box2box_transform: the box encoding; weights (10, 10, 5, 5) are SSD's variances
                (0.1, 0.1, 0.2, 0.2) on the center-size encoding.
            matcher: labels default boxes positive or negative and matches them to ground truth.
            num_classes: K, object classes; background is class K.
            neg_pos_ratio: hard-negative mining, negatives kept per positive.
            min_negatives_per_image: hard-negative mining, negatives kept at least per image,
                so an image without objects still trains the background class.
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            smooth_l1_beta: the smooth-L1 loss's beta (0: L1).
            test_score_thresh: class scores (softmax) at or below it are dropped.
            test_topk_candidates: highest-scoring default boxes kept per class before NMS.
            test_nms_thresh: IoU threshold of the per-class NMS.
            max_detections_per_image: detections kept per image, the highest-scoring.
            pixel_mean, pixel_std: per-channel normalisation, in the input's channel order.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if box_reg_loss_type not in BOX_REG_LOSSES:
            raise ValueError(
                f"box_reg_loss_type must be one of {BOX_REG_LOSSES}, got {box_reg_loss_type!r}"
            )
        self.default_box_generator = default_box_generator
        self.box2box_transform = box2box_transform
        self.matcher = matcher
        self.num_classes = num_classes
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives_per_image = min_negatives_per_image
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg):
        # Checked here for the head, which reads them too; the backbone builder then skips them.
        with checked_config(cfg, check_condconv_config, check_ssd_config):
            backbone = build_backbone(cfg)
        s = cfg.MODEL.SSD
        shapes = backbone.output_shape()
        head_in_features = sorted(shapes, key=lambda f: shapes[f].stride)  # stable: keeps order
        feature_shapes = [shapes[f] for f in head_in_features]
        return {
            "backbone": backbone,
            "head": SSDHead(cfg, feature_shapes),
            "head_in_features": head_in_features,
            "default_box_generator": DefaultBoxGenerator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=tuple(s.BBOX_REG_WEIGHTS)),
            "matcher": SSDMatcher(s.IOU_THRESHOLD),
            "num_classes": s.NUM_CLASSES,
            "neg_pos_ratio": s.NEG_POS_RATIO,
            "min_negatives_per_image": s.MIN_NEGATIVES_PER_IMAGE,
            "box_reg_loss_type": s.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": s.SMOOTH_L1_BETA,
            "test_score_thresh": s.SCORE_THRESH_TEST,
            "test_topk_candidates": s.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": s.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward_training(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes + 1, 4]
        )
        default_boxes = self.default_box_generator(features, images.tensor.shape[-2:])
        gt_labels, gt_boxes = self.label_default_boxes(default_boxes, gt_instances)
        return self.losses(default_boxes, pred_logits, gt_labels, pred_deltas, gt_boxes)

    @torch.no_grad()
    def label_default_boxes(
        self, default_boxes: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            default_boxes: per level, the level's default boxes.
            gt_instances: per image, ``gt_boxes`` and ``gt_classes``.

        Returns:
            gt_labels: per image, (R,) int64 class of every default box, K for background.
            gt_boxes: per image, (R, 4) matched ground-truth box of every default box (zeros
                without ground truth; meaningless for background).
        """
        default_boxes = Boxes.cat(default_boxes)
        gt_labels, gt_boxes = [], []
        for gt in gt_instances:
            matches, match_labels = self.matcher(pairwise_iou(gt.gt_boxes, default_boxes))
            if len(gt) > 0:
                labels = gt.gt_classes[matches]
                labels[match_labels == 0] = self.num_classes
                boxes = gt.gt_boxes.tensor[matches]
            else:
                labels = torch.full_like(matches, self.num_classes)
                boxes = torch.zeros_like(default_boxes.tensor)
            gt_labels.append(labels)
            gt_boxes.append(boxes)
        return gt_labels, gt_boxes

    def losses(
        self,
        default_boxes: List[Boxes],
        pred_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """SSD's loss (Liu et al. 2016, eq. 1, alpha = 1): softmax cross-entropy over the
        positives and the mined negatives plus box regression over the positives, both divided by
        the number of positives in the batch (at least 1).

        Args:
            default_boxes: per level, (R_k) boxes; R = sum of R_k.
            pred_logits: per level, (N, R_k, K + 1).
            gt_labels: per image, (R,) labels from :meth:`label_default_boxes`.
            pred_deltas: per level, (N, R_k, 4).
            gt_boxes: per image, (R, 4).

        Returns:
            dict with "loss_cls" and "loss_box_reg", scalars.
        """
        gt_labels = torch.stack(gt_labels)  # (N, R)
        positive = gt_labels != self.num_classes
        num_pos = positive.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos / gt_labels.shape[0])
        normalizer = max(num_pos, 1)

        logits = cat(pred_logits, dim=1)  # (N, R, K + 1)
        cls_losses = F.cross_entropy(
            logits.flatten(0, 1).float(), gt_labels.flatten(), reduction="none"
        ).view_as(gt_labels)
        negative = hard_negative_mining(
            cls_losses, positive, self.neg_pos_ratio, self.min_negatives_per_image
        )
        loss_cls = cls_losses[positive | negative].sum()

        deltas = cat(pred_deltas, dim=1)[positive]  # (P, 4)
        box_index = torch.nonzero(positive)[:, 1]
        anchors = Boxes.cat(default_boxes).tensor[box_index]
        targets = torch.stack(gt_boxes)[positive]
        if self.box_reg_loss_type == "smooth_l1":
            target_deltas = self.box2box_transform.get_deltas(anchors, targets)
            loss_box_reg = smooth_l1_loss(
                deltas, target_deltas, beta=self.smooth_l1_beta, reduction="sum"
            )
        else:
            loss_fn = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}
            pred_boxes = self.box2box_transform.apply_deltas(deltas, anchors)
            loss_box_reg = loss_fn[self.box_reg_loss_type](pred_boxes, targets, reduction="sum")
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    def forward_inference(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor]],
    ) -> List[Instances]:
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes + 1, 4]
        )
        default_boxes = Boxes.cat(
            self.default_box_generator(features, images.tensor.shape[-2:])
        ).tensor
        logits, deltas = cat(pred_logits, dim=1), cat(pred_deltas, dim=1)
        return [
            self.inference_single_image(default_boxes, logits[i], deltas[i], image_size)
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self,
        default_boxes: torch.Tensor,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        image_size: Tuple[int, int],
    ) -> Instances:
        """Softmax scores; per class, the ``test_topk_candidates`` best default boxes scoring
        above ``test_score_thresh``; decoding, clipping to the image, per-class NMS; the
        ``max_detections_per_image`` best.

        Args:
            default_boxes: (R, 4).
            logits: (R, K + 1).
            deltas: (R, 4).
            image_size: (H, W) of the image in the (padded) batch.

        Returns:
            Instances with ``pred_boxes``, ``scores`` and ``pred_classes``, in the input image's
            coordinates (``DenseDetector.forward`` rescales them to "height" x "width").
        """
        scores = F.softmax(logits.float(), dim=1)[:, : self.num_classes]  # (R, K)
        topk = min(self.test_topk_candidates, scores.shape[0])
        top_scores, top_index = scores.topk(topk, dim=0)  # (topk, K), per class
        keep = top_scores > self.test_score_thresh
        box_index = top_index[keep]
        classes = torch.nonzero(keep)[:, 1]  # row-major, as boolean indexing
        boxes = self.box2box_transform.apply_deltas(deltas[box_index], default_boxes[box_index])
        boxes = Boxes(boxes)
        boxes.clip(image_size)
        kept = batched_nms(boxes.tensor, top_scores[keep], classes, self.test_nms_thresh)
        kept = kept[: self.max_detections_per_image]
        return Instances(
            image_size,
            pred_boxes=boxes[kept],
            scores=top_scores[keep][kept],
            pred_classes=classes[kept],
        )

"""SSD's matching of default boxes to ground truth (Liu et al. 2016, sec. 2.2 "Matching
strategy")."""

from typing import Tuple

import torch

__all__ = ["SSDMatcher"]


class SSDMatcher:
    """Matches default boxes to ground-truth boxes by IoU, in SSD's two steps:

    1. every default box whose best IoU is >= ``threshold`` goes to its best ground truth;
    2. every ground truth takes its own best default box, whatever their IoU (SSD's forced
       "bipartite" match), overriding step 1. When two ground truths share a best default box,
       the later one keeps it; ties within a row go to the lowest default-box index.

    A ground truth that overlaps no default box at all (IoU 0, e.g. a degenerate box) is not forced
    onto one: it would give an arbitrary match and, if empty, infinite box targets.

    Unlike detectron2's ``Matcher(allow_low_quality_matches=True)``, which marks such boxes
    positive but keeps their argmax ground truth, step 2 also sets the matched index.

    Args:
        threshold: the IoU threshold of step 1 (SSD: 0.5).
    """

    def __init__(self, threshold: float = 0.5):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def __call__(self, match_quality_matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            match_quality_matrix: (G, R) IoU of G ground truths and R default boxes.

        Returns:
            matches: (R,) int64, the matched ground truth of each default box (0 where unmatched).
            match_labels: (R,) int8, 1 for positives, 0 for negatives (detectron2's labels).
        """
        num_gt, num_boxes = match_quality_matrix.shape
        device = match_quality_matrix.device
        if num_gt == 0:
            zeros = torch.zeros(num_boxes, dtype=torch.int64, device=device)
            return zeros, zeros.to(torch.int8)
        best_iou, matches = match_quality_matrix.max(dim=0)
        match_labels = (best_iou >= self.threshold).to(torch.int8)

        gt_best_iou, gt_best_box = match_quality_matrix.max(dim=1)
        forced = torch.nonzero(gt_best_iou > 0).squeeze(1)
        # Indexed assignment with repeated indices keeps an unspecified one: take the largest
        # ground-truth index per default box explicitly.
        forced_gt = torch.full_like(matches, -1)
        forced_gt.scatter_reduce_(0, gt_best_box[forced], forced, reduce="amax")
        is_forced = forced_gt >= 0
        matches = torch.where(is_forced, forced_gt, matches)
        match_labels[is_forced] = 1
        return matches, match_labels

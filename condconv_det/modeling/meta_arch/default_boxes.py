"""SSD's default boxes (Liu et al. 2016, sec. 2.2 "Choosing scales and aspect ratios")."""

import math
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes
from torch import nn

__all__ = ["DefaultBoxGenerator", "default_box_scales"]


def default_box_scales(num_levels: int, min_scale: float, max_scale: float) -> List[float]:
    """The SSD paper's scales, eq. 4: ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)`` for
    levels k = 1..m, plus ``s_{m+1} = 1`` for the last level's extra box (as the TF API and
    torchvision). One level gets ``[min_scale, max_scale]``.

    Returns:
        ``num_levels + 1`` scales, fractions of the image side.
    """
    if num_levels == 1:
        return [min_scale, max_scale]
    step = (max_scale - min_scale) / (num_levels - 1)
    return [min_scale + step * k for k in range(num_levels)] + [1.0]


class DefaultBoxGenerator(nn.Module):
    """Makes SSD's default boxes, in absolute pixels, for the feature maps of an image.

    At level k (scale ``s_k``, aspect ratios ``a``), every cell (i, j) of the ``H_k x W_k`` map is
    the centre ``((j + 0.5) / W_k * W, (i + 0.5) / H_k * H)`` of, in this order:

    * a 1:1 box of scale ``s_k``;
    * a 1:1 box of scale ``sqrt(s_k s_{k+1})``;
    * for each ratio r in ``a``: an r:1 box and a 1:r box of scale ``s_k`` (``w = s_k sqrt(r)``,
      ``h = s_k / sqrt(r)``).

    Sizes are fractions of the image's width and height, as the paper's normalised coordinates: on
    SSD's square input, boxes of ratio 1 are square. Boxes are ordered (row, column, box), as
    :func:`detectron2.modeling.meta_arch.dense_detector.permute_to_N_HWA_K` orders predictions.

    Args:
        aspect_ratios: per level, the ratios r (r and 1/r are both added; r = 1 adds two more
            1:1 boxes).
        min_scale, max_scale: scales of the first and last levels (see
            :func:`default_box_scales`).
        clip: clip the boxes to the image.
    """

    @configurable
    def __init__(
        self,
        *,
        aspect_ratios: Sequence[Sequence[float]],
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        clip: bool = True,
    ):
        super().__init__()
        if not aspect_ratios or any(r <= 0 for ratios in aspect_ratios for r in ratios):
            raise ValueError(f"aspect_ratios must be lists of positive ratios, got {aspect_ratios}")
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.scales = default_box_scales(len(aspect_ratios), min_scale, max_scale)
        self.clip = clip
        # (A_k, 2) widths and heights of each level's boxes, fractions of the image side.
        self._wh = [self._cell_wh(k) for k in range(len(aspect_ratios))]
        self._cache: Dict[Tuple, List[Boxes]] = {}

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        ratios = cfg.MODEL.SSD.ASPECT_RATIOS
        if len(ratios) == 1:
            ratios = list(ratios) * len(input_shape)
        if len(ratios) != len(input_shape):
            raise ValueError(
                f"MODEL.SSD.ASPECT_RATIOS has {len(ratios)} lists for {len(input_shape)} feature "
                "levels; give one list per level, or a single list for all"
            )
        return {
            "aspect_ratios": ratios,
            "min_scale": cfg.MODEL.SSD.MIN_SCALE,
            "max_scale": cfg.MODEL.SSD.MAX_SCALE,
            "clip": cfg.MODEL.SSD.CLIP_DEFAULT_BOXES,
        }

    def _cell_wh(self, level: int) -> torch.Tensor:
        s, s_next = self.scales[level], self.scales[level + 1]
        wh = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in self.aspect_ratios[level]:
            wh += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        return torch.tensor(wh, dtype=torch.float64)

    @property
    def num_cell_anchors(self) -> List[int]:
        """Default boxes per location at each level (the name of detectron2's anchor
        generators)."""
        return [len(wh) for wh in self._wh]

    @property
    def num_levels(self) -> int:
        return len(self._wh)

    def grid_default_boxes(
        self, grid_sizes: Sequence[Tuple[int, int]], image_size: Tuple[int, int]
    ) -> List[torch.Tensor]:
        """
        Args:
            grid_sizes: (H_k, W_k) of each level.
            image_size: (H, W) of the (padded) input.

        Returns:
            list of (H_k * W_k * A_k, 4) float64 tensors, XYXY_ABS.
        """
        if len(grid_sizes) != self.num_levels:
            raise ValueError(f"got {len(grid_sizes)} feature maps for {self.num_levels} levels")
        height, width = image_size
        out = []
        for (h, w), wh in zip(grid_sizes, self._wh):
            cy = (torch.arange(h, dtype=torch.float64) + 0.5) / h
            cx = (torch.arange(w, dtype=torch.float64) + 0.5) / w
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")
            centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # (H_k W_k, 1, 2)
            half = wh[None] / 2  # (1, A_k, 2)
            boxes = torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4)
            boxes = boxes * torch.tensor([width, height, width, height], dtype=torch.float64)
            if self.clip:
                boxes[:, 0::2].clamp_(min=0, max=width)
                boxes[:, 1::2].clamp_(min=0, max=height)
            out.append(boxes)
        return out

    def forward(self, features: List[torch.Tensor], image_size: Tuple[int, int]) -> List[Boxes]:
        """
        Args:
            features: the head's feature maps, each (N, C_k, H_k, W_k).
            image_size: (H, W) of the (padded) batch of images, ``images.tensor.shape[-2:]``.

        Returns:
            list[Boxes]: per level, H_k * W_k * A_k float32 boxes on the features' device. They are
            cached per grid sizes, image size and device: do not modify them in place.
        """
        grid_sizes = tuple(tuple(int(s) for s in f.shape[-2:]) for f in features)
        image_size = (int(image_size[0]), int(image_size[1]))
        device = features[0].device
        key = (grid_sizes, image_size, str(device))
        if key not in self._cache:
            if len(self._cache) >= 16:  # SSD sees one input size; bound the cache anyway
                self._cache.clear()
            boxes = self.grid_default_boxes(grid_sizes, image_size)
            self._cache[key] = [Boxes(b.to(device=device, dtype=torch.float32)) for b in boxes]
        return self._cache[key]

    def extra_repr(self) -> str:
        scales = ", ".join(f"{s:.3f}" for s in self.scales)
        return f"aspect_ratios={self.aspect_ratios}, scales=[{scales}], clip={self.clip}"

"""Meta-architectures, registered in detectron2's META_ARCH_REGISTRY on import."""

from .default_boxes import DefaultBoxGenerator, default_box_scales
from .ssd import SSD, hard_negative_mining
from .ssd_head import SSDHead
from .ssd_matcher import SSDMatcher

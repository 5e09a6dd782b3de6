"""An ImageNet classifier on a backbone's last feature: global pool, dropout, linear.

Used to check the architectures against the paper's ImageNet figures (parameters and
multiply-adds) and to hold ImageNet weights converted from other implementations.
"""

from typing import Optional

import torch
from detectron2.modeling.backbone import Backbone, ResNet
from detectron2.modeling.backbone.resnet import BasicStem
from torch import nn

from .backbone.mobilenet import MobileNet
from .backbone.resnet import make_condconv_resnet_stages

__all__ = ["ImageNetClassifier", "build_classifier"]


class ImageNetClassifier(nn.Module):
    """``logits = fc(dropout(mean_hw(backbone(x)[in_feature])))``.

    Args:
        backbone: any detectron2 Backbone.
        in_feature: the backbone output to classify from.
        num_classes: number of classes.
        dropout: dropout probability before the linear layer.
    """

    def __init__(
        self, backbone: Backbone, in_feature: str, num_classes: int = 1000, dropout: float = 0.2
    ):
        super().__init__()
        if in_feature not in backbone.output_shape():
            raise ValueError(
                f"the backbone has no output {in_feature!r}: {sorted(backbone.output_shape())}"
            )
        self.backbone = backbone
        self.in_feature = in_feature
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(backbone.output_shape()[in_feature].channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images -> (N, num_classes) logits."""
        feature = self.backbone(x)[self.in_feature]
        return self.fc(self.dropout(feature.mean(dim=(2, 3))))


def build_classifier(
    arch: str,
    *,
    num_experts: Optional[int] = None,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    **kwargs,
) -> ImageNetClassifier:
    """A classifier for one of the paper's architectures.

    Args:
        arch: a MobileNet-family table name ("mobilenet_v1", "mobilenet_v2",
            "efficientnet_b0", "efficientnet_b1", ...) or "resnet18/34/50/101".
        num_experts: experts of the CondConv layers (0: the static model; None: the default,
            the table's for MobileNets, 8 for ResNets).
        kwargs: passed to :class:`MobileNet` or :func:`make_condconv_resnet_stages`.
    """
    if arch.startswith("resnet"):
        depth = int(arch[len("resnet") :])
        stages = make_condconv_resnet_stages(
            depth,
            num_experts=8 if num_experts is None else num_experts,
            res2_out_channels=64 if depth < 50 else 256,
            stride_in_1x1=False,  # torchvision's ResNet: stride in the 3x3 conv
            **kwargs,
        )
        backbone = ResNet(BasicStem(3, 64, norm="BN"), stages, out_features=["res5"])
        return ImageNetClassifier(backbone, "res5", num_classes, dropout=0.0)
    backbone = MobileNet(
        arch,
        num_experts=num_experts,
        width_mult=width_mult,
        **kwargs,
        out_features=["head" if MobileNet.has_head(arch) else "res5"],
    )
    dropout = {"efficientnet_b0": 0.2, "efficientnet_b1": 0.2, "mobilenet_v2": 0.2}.get(arch, 0.0)
    return ImageNetClassifier(backbone, backbone._out_features[0], num_classes, dropout=dropout)

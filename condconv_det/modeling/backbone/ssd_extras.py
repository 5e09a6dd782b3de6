"""SSD's extra feature layers over any bottom-up backbone, as detectron2's FPN wraps one.

:class:`SSDBackbone` passes chosen bottom-up features on and grows extra, ever coarser features
from the last of them (Liu et al. 2016, sec. 2.1 "Multi-scale feature maps"): each extra layer is
a 1x1 conv to half the channels, then a 3x3 stride-2 conv, as in the TF object-detection API's
SSD-MobileNet; with ``depthwise=True`` the 3x3 conv is depthwise-separable (SSDLite, Sandler et
al. 2018, sec. 6.2). Registered builders put it on the CondConv bottom-ups.
"""

import math
from typing import Callable, Dict, Final, List, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from torch import nn

from condconv_det.config import (
    check_condconv_config,
    check_ssd_config,
    checked_config,
    condconv_options,
)
from condconv_det.layers import check_router_init, set_up_routers

from ..conv import make_ssd_conv
from .mobilenet import build_condconv_mobilenet_backbone
from .resnet import build_condconv_resnet_backbone

__all__ = [
    "SSDBackbone",
    "SSDExtraLayer",
    "build_condconv_mobilenet_ssd_backbone",
    "build_condconv_resnet_ssd_backbone",
]


class SSDExtraLayer(nn.Sequential):
    """The convs of one of :class:`SSDBackbone`'s extra layers, in order.

    Marked by a constant of its own, ``is_ssd_extra_layer``, by which ``SSDBackbone.forward``
    picks its extra layers out of its children (see there).
    """

    is_ssd_extra_layer: Final[bool] = True


class SSDBackbone(Backbone):
    """A bottom-up backbone's features plus SSD's extra layers.

    Args:
        bottom_up: any detectron2 backbone.
        in_features: bottom-up features to output, by non-decreasing stride; the extra layers
            grow from the last one. SSD300-MobileNetV1: ``["res4", "res5"]`` (19x19 and 10x10 at
            300); SSDLite-MobileNetV2: ``["res4", "head"]``.
        extra_channels: output channels of each extra layer. Each doubles the stride and is
            named ``"p<log2(stride)>"``, FPN's convention (``"p6"``, ``"p7"``, ... after a stride-32
            feature). At 300x300 the TF API's ``(512, 256, 256, 128)`` give 5x5, 3x3, 2x2, 1x1.
        depthwise: SSDLite extra layers: 1x1 conv to half, depthwise 3x3 stride 2, 1x1 conv.
        norm: norm of the extra layers (``get_norm`` name or callable, "" for none).
        num_experts: CondConv experts in every extra-layer conv (own routers); 0: static.
        routing_activation, routing_temperature, routing_dropout: see :class:`CondConvRouter`.
        router_init: None keeps each router's own (Glorot) initialisation; "glorot" or "zeros"
            re-initialises every router of this backbone once it is built, the bottom-up's
            included, as the ``MODEL.CONDCONV.ROUTER_INIT`` builders do.
        condconv_options: keyword arguments of :func:`~condconv_det.layers.configure_condconv`
            applied to the extra layers once built (the bottom-up's builder applies its own);
            None: none. The YAML builders pass ``condconv_options(cfg)``.
    """

    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: Sequence[str],
        extra_channels: Sequence[int] = (512, 256, 256, 128),
        depthwise: bool = False,
        norm="BN",
        num_experts: int = 0,
        routing_activation: str = "sigmoid",
        routing_temperature: float = 1.0,
        routing_dropout: float = 0.0,
        router_init: Optional[str] = None,
        condconv_options: Optional[dict] = None,
    ):
        super().__init__()
        check_router_init(router_init)
        bottom_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in bottom_shapes]
        if not in_features or missing:
            raise ValueError(
                f"in_features must be a non-empty subset of the bottom-up outputs "
                f"{sorted(bottom_shapes)}, got {list(in_features)}"
            )
        strides = [bottom_shapes[f].stride for f in in_features]
        if strides != sorted(strides):
            raise ValueError(f"in_features must go by non-decreasing stride, got strides {strides}")
        if num_experts < 0:
            raise ValueError(f"num_experts must be >= 0, got {num_experts}")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self._out_feature_channels: Dict[str, int] = {
            f: bottom_shapes[f].channels for f in in_features
        }
        self._out_feature_strides: Dict[str, int] = {
            f: bottom_shapes[f].stride for f in in_features
        }

        router_kwargs = dict(
            activation=routing_activation, temperature=routing_temperature, dropout=routing_dropout
        )
        conv = dict(norm=norm, num_experts=num_experts, router_kwargs=router_kwargs)
        channels, stride = bottom_shapes[in_features[-1]].channels, strides[-1]
        self.extra_names: List[str] = []
        for out_channels in extra_channels:
            if out_channels < 2:
                raise ValueError(f"extra_channels must be >= 2, got {list(extra_channels)}")
            mid = out_channels // 2
            stride *= 2
            layers = [make_ssd_conv(channels, mid, 1, **conv)]
            if depthwise:
                layers += [
                    make_ssd_conv(mid, mid, 3, stride=2, groups=mid, **conv),
                    make_ssd_conv(mid, out_channels, 1, **conv),
                ]
            else:
                layers.append(make_ssd_conv(mid, out_channels, 3, stride=2, **conv))
            name = f"p{int(math.log2(stride))}"
            if name in self._out_feature_channels:
                raise ValueError(f"extra layer {name!r} clashes with a bottom-up feature's name")
            self.add_module(name, SSDExtraLayer(*layers))
            self.extra_names.append(name)
            self._out_feature_channels[name] = out_channels
            self._out_feature_strides[name] = stride
            channels = out_channels
        self._out_features = self.in_features + self.extra_names
        # The bottom-up's routers are re-initialised too; the options reach the extra layers
        # only (the bottom-up was built with its own).
        set_up_routers(
            self, router_init, condconv_options, [getattr(self, n) for n in self.extra_names]
        )

    @property
    def size_divisibility(self) -> int:
        # No padding: every conv here takes any size, and padding SSD's fixed 300x300 input to a
        # multiple of 32 would move every default box.
        return 0

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, C, H, W) images.

        Returns:
            dict: the features ``in_features + extra_names``, each (N, C_f, H_f, W_f). A 3x3
            stride-2 conv with padding 1 maps a side s to ceil(s / 2).
        """
        bottom_up_features = self.bottom_up(x)
        outputs = {f: bottom_up_features[f] for f in self.in_features}
        y = outputs[self.in_features[-1]]
        # The extra layers are direct children, so that the state dict names them "p6", ...
        # TorchScript cannot look a child up by a name known only at run time, so all the
        # children are iterated (in the order they were added: that of extra_names), and it
        # compiles the loop body once for each. The test must be one that it resolves as it
        # compiles, or it would compile the bottom-up, which returns a dict, as an extra layer.
        # hasattr is; isinstance on a module class is too, but matches only the class's first
        # compiled variant (the first extra layer's shapes) and would skip the others.
        for name, layer in self.named_children():
            if hasattr(layer, "is_ssd_extra_layer"):
                y = layer(y)
                outputs[name] = y
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _ssd_backbone(
    cfg,
    input_shape: ShapeSpec,
    build_bottom_up: Callable[..., Backbone],
    out_features_key: str,
) -> SSDBackbone:
    # MODEL.CONDCONV is checked once here, for the extra layers and the bottom-up alike.
    with checked_config(cfg, check_condconv_config, check_ssd_config):
        bottom_up = build_bottom_up(cfg, input_shape)
    s, c = cfg.MODEL.SSD, cfg.MODEL.CONDCONV
    missing = [f for f in s.IN_FEATURES if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.SSD.IN_FEATURES asks for {missing}, which the bottom-up backbone does not "
            f"output ({sorted(bottom_up.output_shape())}); add them to {out_features_key}"
        )
    return SSDBackbone(
        bottom_up=bottom_up,
        in_features=s.IN_FEATURES,
        extra_channels=s.EXTRA_CHANNELS,
        depthwise=s.EXTRA_DEPTHWISE,
        norm=s.NORM,
        num_experts=s.EXTRA_NUM_EXPERTS,
        routing_activation=c.ROUTING_ACTIVATION,
        routing_temperature=c.ROUTING_TEMPERATURE,
        routing_dropout=c.ROUTING_DROPOUT,
        router_init=c.ROUTER_INIT,
        condconv_options=condconv_options(cfg),
    )


@BACKBONE_REGISTRY.register()
def build_condconv_mobilenet_ssd_backbone(cfg, input_shape: ShapeSpec) -> SSDBackbone:
    """CondConv-MobileNet (``MODEL.MOBILENET.*``) with SSD's extra layers (``MODEL.SSD.*``)."""
    return _ssd_backbone(
        cfg, input_shape, build_condconv_mobilenet_backbone, "MODEL.MOBILENET.OUT_FEATURES"
    )


@BACKBONE_REGISTRY.register()
def build_condconv_resnet_ssd_backbone(cfg, input_shape: ShapeSpec) -> SSDBackbone:
    """CondConv-ResNet (``MODEL.RESNETS.*``) with SSD's extra layers (``MODEL.SSD.*``)."""
    return _ssd_backbone(
        cfg, input_shape, build_condconv_resnet_backbone, "MODEL.RESNETS.OUT_FEATURES"
    )

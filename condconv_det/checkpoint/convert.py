"""Pretrained weights under this project's module names: torchvision's ResNet and MobileNetV2
ImageNet checkpoints renamed (detectron2's names for ResNet), and timm's EfficientNet(-CondConv)
checkpoints converted, experts and routers included, into the :class:`MobileNet` that computes
the same function (:func:`timm_efficientnet_variant` says how to build it)."""

import math
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Tuple

import torch

from .strict import CheckpointMismatchError

__all__ = [
    "TimmEfficientNet",
    "timm_efficientnet_to_condconv",
    "timm_efficientnet_variant",
    "torchvision_mobilenet_v2_to_condconv",
    "torchvision_resnet_to_detectron2",
]


def torchvision_resnet_to_detectron2(
    state_dict: Mapping[str, torch.Tensor],
) -> Dict[str, torch.Tensor]:
    """torchvision ``resnet18/34/50/101`` names -> detectron2 ResNet names (``fc.*`` kept)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        new = key
        new = re.sub(r"^conv1\.", "stem.conv1.", new)
        new = re.sub(r"^bn1\.", "stem.conv1.norm.", new)
        new = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", new)
        new = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", new)
        new = new.replace(".downsample.0.", ".shortcut.").replace(
            ".downsample.1.", ".shortcut.norm."
        )
        out[new] = value
    return out


# torchvision's mobilenet_v2 modules -> MobileNet's. ``features.0`` (the stem) and the last
# feature layer (the 1280-channel head conv) are (conv, bn) pairs; the layers in between are the
# blocks, ``features.<i>.conv.*``. The first block has no expansion conv, so its indices name
# other layers than in the blocks after it.
_TORCHVISION_STEM = {"0": "stem.0", "1": "stem.0.norm"}
_TORCHVISION_HEAD = {"0": "head", "1": "head.norm"}
_TORCHVISION_FIRST_BLOCK = {
    "conv.0.0": "depthwise",
    "conv.0.1": "depthwise.norm",
    "conv.1": "project",
    "conv.2": "project.norm",
}
_TORCHVISION_INVERTED_RESIDUAL = {
    "conv.0.0": "expand",
    "conv.0.1": "expand.norm",
    "conv.1.0": "depthwise",
    "conv.1.1": "depthwise.norm",
    "conv.2": "project",
    "conv.3": "project.norm",
}
_TORCHVISION_OUTSIDE_FEATURES = {"classifier.1": "fc"}


def torchvision_mobilenet_v2_to_condconv(
    state_dict: Mapping[str, torch.Tensor], block_names: List[str]
) -> Dict[str, torch.Tensor]:
    """torchvision ``mobilenet_v2`` names -> :class:`MobileNet` ("mobilenet_v2") names, ``fc.*``
    for the classifier.

    Args:
        state_dict: torchvision's state dict.
        block_names: the target's block prefixes in order, ``MobileNet.block_names()``.

    Raises:
        CheckpointMismatchError: a key that is not a torchvision MobileNetV2's, or a number of
            feature layers that is not the target's blocks plus stem and head.
    """
    layers_found = sorted(
        {int(m.group(1)) for k in state_dict for m in [re.match(r"features\.(\d+)\.", k)] if m}
    )
    if layers_found != list(range(len(block_names) + 2)):
        raise CheckpointMismatchError(
            f"the torchvision MobileNetV2 checkpoint has {len(layers_found)} feature layers, the "
            f"target model {len(block_names)} blocks plus stem and head ({len(block_names) + 2}): "
            "convert it for a MobileNetV2 (MODEL.MOBILENET.ARCH mobilenet_v2, width 1.0, or "
            "--arch mobilenet_v2)."
        )
    head_index = len(block_names) + 1
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, _, param = key.rpartition(".")
        m = re.fullmatch(r"features\.(\d+)\.(.+)", module)
        if m is None:
            names, prefix = _TORCHVISION_OUTSIDE_FEATURES, ""
        else:
            index, module = int(m.group(1)), m.group(2)
            if index in (0, head_index):
                names, prefix = _TORCHVISION_STEM if index == 0 else _TORCHVISION_HEAD, ""
            else:
                names = _TORCHVISION_FIRST_BLOCK if index == 1 else _TORCHVISION_INVERTED_RESIDUAL
                prefix = f"{block_names[index - 1]}."
        if module not in names:
            raise CheckpointMismatchError(f"unexpected torchvision MobileNetV2 key {key!r}")
        out[f"{prefix}{names[module]}.{param}"] = value
    return out


class TimmEfficientNet(NamedTuple):
    """The :class:`MobileNet` settings that reproduce one of timm's EfficientNet(-CondConv)
    models exactly."""

    arch: str  # "efficientnet_b0" or "efficientnet_b1" (ARCHS)
    num_experts: int  # experts of the CondConv stages (the last three); 0: a static model
    bn_eps: float  # timm's own weights: PyTorch's 1e-5; the tf_ ports: TensorFlow's 1e-3
    padding: str  # "tf_same" for the tf_ ports, trained with TensorFlow's padding="SAME"

    def mobilenet_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :class:`MobileNet` (and ``build_classifier``)."""
        return dict(num_experts=self.num_experts, bn_eps=self.bn_eps, padding=self.padding)


def timm_efficientnet_variant(name: str) -> TimmEfficientNet:
    """How to build the :class:`MobileNet` equivalent of a timm model.

    Args:
        name: a timm model name, ``[tf_]efficientnet_cc_b{0,1}_{E}e`` or
            ``[tf_]efficientnet_b{0,1}``, optionally with a pretrained tag
            (``efficientnet_cc_b0_4e.ra_in1k``).

    Raises:
        ValueError: for other models.
    """
    match = re.fullmatch(r"(tf_)?efficientnet_(?:cc_(b[01])_(\d+)e|(b[01]))", name.split(".")[0])
    if match is None:
        raise ValueError(
            f"not a timm EfficientNet(-CondConv) B0/B1 model name: {name!r}; expected e.g. "
            "efficientnet_cc_b0_4e, tf_efficientnet_cc_b1_8e or efficientnet_b0"
        )
    tf_port, cc_size, experts, static_size = match.groups()
    return TimmEfficientNet(
        arch=f"efficientnet_{cc_size or static_size}",
        num_experts=int(experts) if experts else 0,
        bn_eps=1e-3 if tf_port else 1e-5,
        padding="tf_same" if tf_port else "symmetric",
    )


# timm's block modules -> MobileNet's. An inverted residual (conv_pw, bn1, conv_dw, bn2, se,
# conv_pwl, bn3, routing_fn) has all three of our convs; timm builds the expansion-free first
# stage as a depthwise-separable block (conv_dw, bn1, se, conv_pw, bn2), which is our inverted
# residual without the expand conv: the same names mean different layers there.
_TIMM_INVERTED_RESIDUAL = {
    "conv_pw": "expand",
    "bn1": "expand.norm",
    "conv_dw": "depthwise",
    "bn2": "depthwise.norm",
    "se.conv_reduce": "se.reduce",
    "se.conv_expand": "se.expand",
    "conv_pwl": "project",
    "bn3": "project.norm",
    "routing_fn": "router.fc",
}
_TIMM_DEPTHWISE_SEPARABLE = {
    "conv_dw": "depthwise",
    "bn1": "depthwise.norm",
    "se.conv_reduce": "se.reduce",
    "se.conv_expand": "se.expand",
    "conv_pw": "project",
    "bn2": "project.norm",
}
_TIMM_OUTSIDE_BLOCKS = {
    "conv_stem": "stem.0",
    "bn1": "stem.0.norm",
    "conv_head": "head",
    "bn2": "head.norm",
    "classifier": "fc",
}


def timm_efficientnet_to_condconv(
    state_dict: Mapping[str, torch.Tensor], block_names: List[str]
) -> Dict[str, torch.Tensor]:
    """timm EfficientNet(-CondConv) names and layouts -> :class:`MobileNet` ("efficientnet_b0"
    or "efficientnet_b1") names and layouts, ``fc.*`` for the classifier.

    timm stores a CondConv kernel flat, ``(E, O * I/g * kh * kw)``; ours is ``(E, O, I/g, kh,
    kw)``, so that ``weight[i]`` is expert i's ``nn.Conv2d`` kernel. The flat layout is the
    row-major view of the same tensor, so it is reshaped, not permuted. Its output channels are
    those of the norm that follows the conv; only the depthwise conv has a spatial kernel (and
    one input channel per group). timm's routing function (linear on the pooled block input,
    then sigmoid) is our block router (``router.fc``).

    Which :class:`MobileNet` computes the same function (experts, norm epsilon, padding) is
    not in the state dict: see :func:`timm_efficientnet_variant`.

    Args:
        state_dict: timm's state dict (``model.state_dict()``, or its saved .pth/.safetensors).
        block_names: the target's block names in order, all of the architecture's:
            ``mobilenet_block_names(arch, depth_mult)``, which also names the blocks of a
            backbone that stops before res5 (``MobileNet.block_names()`` names the built ones).

    Raises:
        CheckpointMismatchError: a key that is not a timm EfficientNet's, or a number of blocks
            that is not the target's (B0 has 16 blocks, B1 23).
    """
    blocks: Dict[Tuple[int, int], Dict[str, torch.Tensor]] = {}
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)", key)
        if m is not None:
            blocks.setdefault((int(m.group(1)), int(m.group(2))), {})[m.group(3)] = value
            continue
        module, _, param = key.rpartition(".")
        if module not in _TIMM_OUTSIDE_BLOCKS:
            raise CheckpointMismatchError(f"unexpected key for a timm EfficientNet: {key!r}")
        out[f"{_TIMM_OUTSIDE_BLOCKS[module]}.{param}"] = value
    if len(blocks) != len(block_names):
        raise CheckpointMismatchError(
            f"the checkpoint has {len(blocks)} blocks, the target {len(block_names)}: a different "
            "depth (EfficientNet-B0 has 16 blocks, B1 23). Build the target from the same timm "
            "model (timm_efficientnet_variant)."
        )
    for name, index in zip(block_names, sorted(blocks)):
        tensors = blocks[index]
        modules = {key.rpartition(".")[0] for key in tensors}
        names = _TIMM_INVERTED_RESIDUAL if "conv_pwl" in modules else _TIMM_DEPTHWISE_SEPARABLE
        for key, value in tensors.items():
            module, _, param = key.rpartition(".")
            timm_key = f"blocks.{index[0]}.{index[1]}.{key}"
            if module not in names:
                raise CheckpointMismatchError(
                    f"unexpected key for a timm EfficientNet: {timm_key!r}"
                )
            ours = names[module]
            if module.startswith("conv_") and param == "weight" and value.dim() == 2:
                norm = next(k for k, v in names.items() if v == f"{ours}.norm")
                if f"{norm}.weight" not in tensors:
                    raise CheckpointMismatchError(f"{timm_key}: the checkpoint lacks its {norm}")
                out_channels = tensors[f"{norm}.weight"].shape[0]
                value = _unflatten_experts(value, out_channels, module == "conv_dw", timm_key)
            out[f"{name}.{ours}.{param}"] = value
    return out


def _unflatten_experts(
    weight: torch.Tensor, out_channels: int, depthwise: bool, key: str
) -> torch.Tensor:
    """timm's flat CondConv kernel (E, O * I/g * k * k) -> (E, O, I/g, k, k)."""
    experts, numel = weight.shape
    per_output = numel // out_channels
    kernel = math.isqrt(per_output) if depthwise else 1
    shape = (experts, out_channels, 1 if depthwise else per_output, kernel, kernel)
    if math.prod(shape[1:]) != numel:
        raise CheckpointMismatchError(
            f"{key}: a flat CondConv kernel of shape {tuple(weight.shape)} is not {out_channels} "
            f"output channels of {'square depthwise' if depthwise else '1x1'} kernels"
        )
    return weight.reshape(shape)

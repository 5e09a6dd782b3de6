#!/usr/bin/env python
"""Converts an ImageNet checkpoint into weights for a (CondConv) model, for MODEL.WEIGHTS.

Static layers take the pretrained weights; CondConv layers are upcycled: every expert starts
from the pretrained kernel (plus a small zero-sum perturbation) and every router at uniform
routing, so the converted model computes exactly what the pretrained static model does. A
checkpoint that is CondConv already (timm's EfficientNet-CondConv) keeps its experts and routers.

    # torchvision ResNet-50 -> the backbone of a CondConv RetinaNet config
    python tools/convert_pretrained.py --source torchvision-resnet --input resnet50.pth \\
        --output r50_condconv.pth --config-file configs/...yaml
    # torchvision MobileNetV2 -> a CondConv-MobileNetV2 classifier with 8 experts
    python tools/convert_pretrained.py --source torchvision-mobilenet_v2 --input mbv2.pth \\
        --output mbv2_cc8.pth --arch mobilenet_v2 --experts 8
    # timm's EfficientNet-CondConv-B0 (a local file: timm's model.safetensors or a saved
    # state dict) -> the same classifier, or (--config-file) a detector's backbone
    python tools/convert_pretrained.py --source timm-efficientnet --input model.safetensors \\
        --timm-model tf_efficientnet_cc_b0_8e --output effnet_cc8.pth

A timm model name says what the state dict does not: B0 or B1, experts, and for the tf_ ports
of TensorFlow weights, TensorFlow's padding and norm epsilon. A --config-file target computes
what the timm model computed only with MODEL.MOBILENET.BN_EPS and .PADDING set to match (the
tool prints the settings).

Then set MODEL.WEIGHTS to the output (detectron2 loads it; the detector's heads, absent from
an ImageNet checkpoint, keep their initialisation). The output is written atomically, and may
not be the input (or the config file): the tool refuses before reading anything.
"""

import _tool_env  # noqa: F401  (first: process settings made before torch is imported)

import argparse
import os
import sys
from typing import NamedTuple, Optional

import torch

from condconv_det.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint_strict,
    timm_efficientnet_to_condconv,
    timm_efficientnet_variant,
    torchvision_mobilenet_v2_to_condconv,
    torchvision_resnet_to_detectron2,
    upcycle_state_dict,
)
from condconv_det.file_io import atomic_write, check_outputs_spare_inputs

SOURCES = ("torchvision-resnet", "torchvision-mobilenet_v2", "timm-efficientnet")


def _read(path: str):
    if not os.path.isfile(path):
        raise SystemExit(f"error: --input {path!r} is not a file")
    if path.endswith(".safetensors"):  # what timm and the Hugging Face hub distribute
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if (
        isinstance(checkpoint, dict)
        and "model" in checkpoint
        and isinstance(checkpoint["model"], dict)
    ):
        checkpoint = checkpoint["model"]
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    return checkpoint


class _MobileNetSettings(NamedTuple):
    """The :class:`MobileNet` arguments a target was built with that the conversion depends on:
    the block names (arch, depth_mult) and whether the weights compute what they computed where
    they were trained (bn_eps, padding)."""

    arch: str
    depth_mult: float
    bn_eps: Optional[float]  # None: the table's
    padding: str


def _target(args, timm_variant=None):
    """(model, the module receiving the ImageNet weights, its name prefix in the model, whether
    the model is a classifier, its :class:`_MobileNetSettings` (used for a MobileNet target))."""
    if args.arch or (timm_variant is not None and not args.config_file):
        from condconv_det.modeling.classifier import build_classifier

        kwargs = {"num_experts": args.experts}
        if timm_variant is not None:
            # The classifier that computes what the timm model computes, unless told otherwise.
            kwargs = timm_variant.mobilenet_kwargs()
            if args.experts is not None:
                kwargs["num_experts"] = args.experts
        arch = args.arch or timm_variant.arch
        model = build_classifier(arch, **kwargs)
        settings = _MobileNetSettings(
            arch, 1.0, kwargs.get("bn_eps"), kwargs.get("padding", "symmetric")
        )
        return model, model.backbone, "backbone.", True, settings
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from condconv_det import add_condconv_config

    cfg = get_cfg()
    add_condconv_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    backbone, prefix = model.backbone, "backbone."
    if hasattr(backbone, "bottom_up"):
        backbone, prefix = backbone.bottom_up, "backbone.bottom_up."
    m = cfg.MODEL.MOBILENET
    settings = _MobileNetSettings(m.ARCH, m.DEPTH_MULT, m.BN_EPS, m.PADDING)
    return model, backbone, prefix, False, settings


def _check_settings(settings: _MobileNetSettings, timm_model: str, variant) -> None:
    """Says which config keys make the target compute what ``timm_model`` computed."""
    from condconv_det.modeling.backbone import ARCHS

    bn_eps = ARCHS[settings.arch].bn_eps if settings.bn_eps is None else settings.bn_eps
    if (bn_eps, settings.padding) != (variant.bn_eps, variant.padding):
        print(
            f"note: {timm_model} was trained with padding {variant.padding!r} and norm epsilon "
            f"{variant.bn_eps:g}; the target has {settings.padding!r} and {bn_eps:g}. Set "
            f"MODEL.MOBILENET.PADDING {variant.padding} MODEL.MOBILENET.BN_EPS {variant.bn_eps:g} "
            "for the target to compute what it computed."
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--input", required=True, help="the pretrained checkpoint (a state dict)")
    parser.add_argument(
        "--output", required=True, help="where to write the converted weights (.pth; not --input)"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--config-file", help="target: the model of this detectron2 config")
    target.add_argument(
        "--arch",
        help="target: an ImageNet classifier (see tools/analyze_model.py); default for "
        "--source timm-efficientnet: the one of --timm-model",
    )
    parser.add_argument("--experts", type=int, default=None, help="with --arch: CondConv experts")
    parser.add_argument(
        "--timm-model",
        help="with --source timm-efficientnet: the timm model the checkpoint is of, e.g. "
        "efficientnet_cc_b0_4e, tf_efficientnet_cc_b1_8e (tf_: ports of TensorFlow weights)",
    )
    parser.add_argument(
        "--noise", type=float, default=0.01, help="expert perturbation (relative std)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:  # before anything is read: an output over an input would destroy the only copy
        check_outputs_spare_inputs(
            [("--input", args.input), ("--config-file", args.config_file)],
            [args.output],
            option="--output",
        )
    except ValueError as e:
        parser.error(str(e))
    timm_variant = None
    if args.source == "timm-efficientnet":
        if not args.timm_model:
            parser.error("--source timm-efficientnet needs --timm-model")
        try:
            timm_variant = timm_efficientnet_variant(args.timm_model)
        except ValueError as e:
            raise SystemExit(f"error: --timm-model: {e}")
    elif not (args.arch or args.config_file):
        parser.error("one of the arguments --config-file --arch is required")

    source = _read(args.input)
    model, backbone, prefix, keep_fc, settings = _target(args, timm_variant)
    if args.source == "torchvision-resnet":
        renamed = torchvision_resnet_to_detectron2(source)
    else:
        from condconv_det.modeling.backbone import MobileNet, mobilenet_block_names

        if not isinstance(backbone, MobileNet):
            raise SystemExit(f"error: --source {args.source} needs a MobileNet target")
        try:
            if timm_variant is not None:
                _check_settings(settings, args.timm_model, timm_variant)
                # All of the checkpoint's blocks, also those of levels the target does not build.
                names = mobilenet_block_names(settings.arch, settings.depth_mult)
                renamed = timm_efficientnet_to_condconv(source, names)
            else:
                renamed = torchvision_mobilenet_v2_to_condconv(source, backbone.block_names())
        except CheckpointMismatchError as e:
            raise SystemExit(f"error: {e}")
    fc = {k: v for k, v in renamed.items() if k.startswith("fc.")}
    renamed = {k: v for k, v in renamed.items() if not k.startswith("fc.")}
    # Stages the target does not build (e.g. res5 for a res4 backbone) are not wanted.
    target_keys = set(model.state_dict())
    wanted = {k: v for k, v in renamed.items() if prefix + k in target_keys}
    dropped = sorted(set(renamed) - set(wanted))
    if any(".router." in k for k in wanted):
        # Trained CondConv weights (experts and routers): nothing to upcycle.
        converted = {prefix + k: v for k, v in wanted.items()}
    else:
        converted = upcycle_state_dict(wanted, model, prefix=prefix, noise=args.noise)
    if keep_fc:
        converted.update(fc)
    # Check the backbone part strictly: every backbone weight must come from the checkpoint.
    part = {k[len(prefix) :]: v for k, v in converted.items() if k.startswith(prefix)}
    try:
        load_checkpoint_strict(backbone, part)
        if keep_fc:
            load_checkpoint_strict(model, converted)
    except CheckpointMismatchError as e:
        raise SystemExit(f"error: {e}")
    if dropped:
        print(
            f"not used by the target (not built there): {len(dropped)} tensors, e.g. {dropped[:3]}"
        )
    checkpoint = {"model": converted, "__author__": "condconv_det", "matching_heuristics": False}
    atomic_write(args.output, lambda f: torch.save(checkpoint, f))
    print(f"wrote {args.output}: {len(converted)} tensors for {type(model).__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

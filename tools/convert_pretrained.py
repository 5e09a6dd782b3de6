#!/usr/bin/env python
"""Converts an ImageNet checkpoint into weights for a (CondConv) model, for MODEL.WEIGHTS.

Static layers take the pretrained weights; CondConv layers are upcycled: every expert starts
from the pretrained kernel (plus a small zero-sum perturbation) and every router at uniform
routing, so the converted model computes exactly what the pretrained static model does.

    # torchvision ResNet-50 -> the backbone of a CondConv RetinaNet config
    python tools/convert_pretrained.py --source torchvision-resnet --input resnet50.pth \\
        --output r50_condconv.pth --config-file configs/...yaml
    # torchvision MobileNetV2 -> a CondConv-MobileNetV2 classifier with 8 experts
    python tools/convert_pretrained.py --source torchvision-mobilenet_v2 --input mbv2.pth \\
        --output mbv2_cc8.pth --arch mobilenet_v2 --experts 8

Then set MODEL.WEIGHTS to the output (detectron2 loads it; the detector's heads, absent from
an ImageNet checkpoint, keep their initialisation).
"""
import argparse
import os
import sys

import torch

from condconv_det.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint_strict,
    torchvision_mobilenet_v2_to_condconv,
    torchvision_resnet_to_detectron2,
    upcycle_state_dict,
)

SOURCES = ("torchvision-resnet", "torchvision-mobilenet_v2")


def _read(path: str):
    if not os.path.isfile(path):
        raise SystemExit(f"error: --input {path!r} is not a file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
        checkpoint = checkpoint["model"]
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    return checkpoint


def _target(args):
    """(model, the module receiving the ImageNet weights, its name prefix in the model)."""
    if args.arch:
        from condconv_det.modeling.classifier import build_classifier

        model = build_classifier(args.arch, num_experts=args.experts)
        return model, model.backbone, "backbone.", True
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
    return model, backbone, prefix, False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--input", required=True, help="the pretrained checkpoint (a state dict)")
    parser.add_argument("--output", required=True, help="where to write the converted weights (.pth)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--config-file", help="target: the model of this detectron2 config")
    target.add_argument("--arch", help="target: an ImageNet classifier (see tools/analyze_model.py)")
    parser.add_argument("--experts", type=int, default=None, help="with --arch: CondConv experts")
    parser.add_argument("--noise", type=float, default=0.01, help="expert perturbation (relative std)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    source = _read(args.input)
    model, backbone, prefix, keep_fc = _target(args)
    if args.source == "torchvision-resnet":
        renamed = torchvision_resnet_to_detectron2(source)
    else:
        from condconv_det.modeling.backbone import MobileNet

        if not isinstance(backbone, MobileNet):
            raise SystemExit("error: --source torchvision-mobilenet_v2 needs a MobileNet target")
        renamed = torchvision_mobilenet_v2_to_condconv(source, backbone.block_names())
    fc = {k: v for k, v in renamed.items() if k.startswith("fc.")}
    renamed = {k: v for k, v in renamed.items() if not k.startswith("fc.")}
    # Stages the target does not build (e.g. res5 for a res4 backbone) are not wanted.
    wanted = {k: v for k, v in renamed.items() if prefix + k in model.state_dict()}
    dropped = sorted(set(renamed) - set(wanted))
    converted = upcycle_state_dict(wanted, model, prefix=prefix, noise=args.noise)
    if keep_fc:
        converted.update(fc)
    # Check the backbone part strictly: every backbone weight must come from the checkpoint.
    part = {k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)}
    try:
        load_checkpoint_strict(backbone, part)
    except CheckpointMismatchError as e:
        raise SystemExit(f"error: {e}")
    if keep_fc:
        load_checkpoint_strict(model, converted)
    if dropped:
        print(f"not used by the target (not built there): {len(dropped)} tensors, e.g. {dropped[:3]}")
    torch.save({"model": converted, "__author__": "condconv_det", "matching_heuristics": False}, args.output)
    print(f"wrote {args.output}: {len(converted)} tensors for {type(model).__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

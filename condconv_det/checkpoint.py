"""Pretrained weights for (CondConv) backbones: renaming, converting and upcycling.

- Renaming: torchvision's ResNet and MobileNetV2 ImageNet checkpoints to this project's module
  names (detectron2's, for ResNet).
- Converting: timm's EfficientNet-CondConv checkpoints (``efficientnet_cc_b0_4e``,
  ``efficientnet_cc_b0_8e``, ``efficientnet_cc_b1_8e`` and their ``tf_`` ports of the official
  TensorFlow weights; also the static ``efficientnet_b0/b1``), experts and routers included, into
  the "efficientnet_b0" / "efficientnet_b1" :class:`MobileNet` that computes the same function
  (:func:`timm_efficientnet_variant` says how to build it).
- Upcycling (:func:`upcycle_state_dict`): a static checkpoint into a CondConv model. Every
  expert starts from the pretrained kernel and each router starts at constant, uniform routing
  ``r_i = 1/E`` (zero weights, bias ``logit(1/E)`` for sigmoid routing, zero for softmax), so
  the mixed kernel is the pretrained one and the model's output at load time equals the static
  model's. Identical experts would stay identical under gradient descent (equal routing, equal
  gradients), so each expert also gets a small perturbation ``D_i`` with ``sum_i D_i = 0``: the
  mix ``sum_i (W + D_i) / E`` is still exactly ``W``, but the routers' gradients differ per
  expert from the first step.
"""
import math
import os
import pickle
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from condconv_det.file_io import atomic_write
from condconv_det.layers import CondConv2d, CondConvRouter, shared_expert_weights, uniform_start

__all__ = [
    "torchvision_resnet_to_detectron2",
    "torchvision_mobilenet_v2_to_condconv",
    "TimmEfficientNet",
    "timm_efficientnet_variant",
    "timm_efficientnet_to_condconv",
    "upcycle_state_dict",
    "load_checkpoint_strict",
    "CheckpointMismatchError",
    "UnreadableCheckpointError",
    "WEIGHTS_MATCHES",
    "state_dict_differences",
    "CondConvCheckpointer",
]


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model; the message lists every difference."""


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that cannot be read (empty, cut short, not a PyTorch checkpoint); the
    message names the file."""


#: How a checkpoint named by ``MODEL.WEIGHTS`` must fit the model (:class:`CondConvCheckpointer`):
#: ``strict``: every tensor of the model, with its shape, and nothing else; ``pretrained``: every
#: tensor of the checkpoint fits a tensor of the model, which may have more (pretrained backbone
#: weights under new layers, which keep their initialisation), but no CondConv layer gets its
#: experts without its router or the reverse; ``partial``: whatever fits loads and the rest is
#: listed in the log (fine-tuning with other heads), but at least one tensor must fit.
WEIGHTS_MATCHES = ("strict", "pretrained", "partial")


def torchvision_resnet_to_detectron2(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
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
        new = new.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        out[new] = value
    return out


def torchvision_mobilenet_v2_to_condconv(
    state_dict: Mapping[str, torch.Tensor], block_names: List[str]
) -> Dict[str, torch.Tensor]:
    """torchvision ``mobilenet_v2`` names -> :class:`MobileNet` ("mobilenet_v2") names.

    Args:
        state_dict: torchvision's state dict.
        block_names: the target's block prefixes in order, ``MobileNet.block_names()``.
    """
    layers_found = sorted({int(m.group(1)) for k in state_dict for m in [re.match(r"features\.(\d+)\.", k)] if m})
    if layers_found != list(range(len(block_names) + 2)):
        raise CheckpointMismatchError(
            f"the torchvision MobileNetV2 checkpoint has {len(layers_found)} feature layers, the "
            f"target model {len(block_names)} blocks plus stem and head ({len(block_names) + 2}): "
            "convert it for a MobileNetV2 (MODEL.MOBILENET.ARCH mobilenet_v2, width 1.0, or "
            "--arch mobilenet_v2)."
        )
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = re.match(r"features\.(\d+)\.(.*)", key)
        if m is None:
            c = re.match(r"classifier\.1\.(.*)", key)
            if c is None:
                raise CheckpointMismatchError(f"unexpected torchvision MobileNetV2 key {key!r}")
            out[f"fc.{c.group(1)}"] = value
            continue
        index, rest = int(m.group(1)), m.group(2)
        conv_or_norm = lambda r: r.replace("0.", "", 1) if r.startswith("0.") else "norm." + r[2:]  # noqa: E731
        if index == 0:  # stem conv: 0 conv, 1 bn
            out[f"stem.0.{'weight' if rest == '0.weight' else 'norm.' + rest[2:]}"] = value
            continue
        if index == len(block_names) + 1:  # the 1280-channel head conv
            out[f"head.{'weight' if rest == '0.weight' else 'norm.' + rest[2:]}"] = value
            continue
        block = block_names[index - 1]
        parts = rest.split(".")  # conv.<i>.<...>
        layers = ["depthwise", "project"] if index == 1 else ["expand", "depthwise", "project"]
        i = int(parts[1])
        if index == 1:
            # conv.0 = (dw conv, bn); conv.1 = project conv; conv.2 = project bn
            name = {0: "depthwise", 1: "project", 2: "project"}[i]
            tail = ".".join(parts[2:])
            if i == 0:
                tail = conv_or_norm(tail)
            elif i == 2:
                tail = "norm." + tail
        else:
            # conv.0 = (expand conv, bn); conv.1 = (dw conv, bn); conv.2 = project conv; conv.3 = bn
            name = {0: "expand", 1: "depthwise", 2: "project", 3: "project"}[i]
            tail = ".".join(parts[2:])
            if i in (0, 1):
                tail = conv_or_norm(tail)
            elif i == 3:
                tail = "norm." + tail
        assert name in layers
        out[f"{block}.{name}.{tail}"] = value
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
        block_names: the target's block names in order, ``MobileNet.block_names()`` (with
            ``include_unbuilt=True`` for a backbone that stops before res5).

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


def _routers(model: nn.Module) -> Dict[str, CondConvRouter]:
    return {name: m for name, m in model.named_modules() if isinstance(m, CondConvRouter)}


def upcycle_state_dict(
    static: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    prefix: str = "",
    noise: float = 0.01,
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """A state dict for ``model`` (CondConv or static) from a static model's state dict.

    Args:
        static: the pretrained static weights, named as ``model``'s parameters (plus
            ``prefix``) with plain kernels where ``model`` has CondConv experts.
        model: the target model.
        prefix: prepended to ``static``'s names to get ``model``'s (e.g. ``backbone.bottom_up.``).
        noise: std of the zero-sum expert perturbation, relative to each kernel's std.
        seed: seed of that perturbation.

    Returns:
        the state dict of ``model``'s keys that ``static`` covers, plus the routers'.
    """
    generator = torch.Generator().manual_seed(seed)
    target = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    condconvs = {name: m for name, m in model.named_modules() if isinstance(m, CondConv2d)}
    for key, value in static.items():
        name = prefix + key
        if name not in target:
            out[name] = value  # reported as unexpected by load_checkpoint_strict
            continue
        want = target[name]
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner in condconvs and tuple(want.shape) == (condconvs[owner].num_experts,) + tuple(value.shape):
            conv = condconvs[owner]
            if conv.static_weight is not None:
                # A static kernel beside the experts: it takes the pretrained kernel, the experts
                # stay at zero, and the layer computes exactly what the static one did.
                leaf = name.rsplit(".", 1)[-1]
                out[(owner + "." if owner else "") + "static_" + leaf] = value.to(want.dtype)
                out[name] = torch.zeros_like(want)
                continue
            experts = conv.num_experts
            start = _uniform_routing(model, experts)
            out[name] = shared_expert_weights(value.to(want.dtype), experts, start, noise, generator)
        else:
            out[name] = value
    if any(c.static_weight is not None for c in condconvs.values()):
        # Zero experts make the routing irrelevant at the start; the routers keep their own
        # (e.g. Glorot) initialisation, which differs between experts so that they specialise.
        return out
    for name, router in _routers(model).items():
        weight = torch.zeros_like(router.fc.weight)
        bias = torch.zeros_like(router.fc.bias)
        if router.activation == "sigmoid":
            bias.fill_(_logit(uniform_start("sigmoid", router.num_experts)))
        out[f"{name}.fc.weight"], out[f"{name}.fc.bias"] = weight, bias
    return out


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _uniform_routing(model: nn.Module, experts: int) -> float:
    """The routing weight every expert starts with after upcycling (:func:`uniform_start`)."""
    routers = list(_routers(model).values())
    return uniform_start(routers[0].activation if routers else "sigmoid", experts)


def load_checkpoint_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, ignore: Optional[List[str]] = None) -> None:
    """Loads ``state_dict`` into ``model``; on any mismatch raises
    :class:`CheckpointMismatchError` listing the missing and unexpected keys and the shapes
    that differ. Keys matching a regex in ``ignore`` are skipped on both sides."""
    ignore_re = [re.compile(p) for p in (ignore or [])]
    skip = lambda k: any(r.search(k) for r in ignore_re)  # noqa: E731
    target = {k: v for k, v in model.state_dict().items() if not skip(k)}
    given = {k: v for k, v in state_dict.items() if not skip(k)}
    missing, unexpected, shapes = state_dict_differences(target, given)
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            mismatch_report("the checkpoint", missing, unexpected, shapes)
            + "\n  Convert it for this model with tools/convert_pretrained.py (matching --source and "
            "the same config / arch / experts)."
        )
    given = {k: v for k, v in given.items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict({**model.state_dict(), **given}, strict=True)


def state_dict_differences(
    target: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> Tuple[List[str], List[str], List[str]]:
    """The keys of ``target`` (a model's state dict) that ``given`` lacks, the keys of ``given``
    that ``target`` lacks, and ``"key: checkpoint (shape) vs model (shape)"`` for the shared keys
    whose shapes differ; BatchNorm's ``num_batches_tracked`` counters are not compared."""
    target = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in given.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(target) - set(given))
    unexpected = sorted(set(given) - set(target))
    shapes = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(target[k].shape)}"
        for k in set(target) & set(given)
        if tuple(getattr(given[k], "shape", ())) != tuple(target[k].shape)
    )
    return missing, unexpected, shapes


def mismatch_report(what: str, missing: List[str], unexpected: List[str], shapes: List[str], limit: int = 20) -> str:
    """``"<what> does not fit the model:"`` and the first ``limit`` keys of each kind."""
    lines = [f"{what} does not fit the model:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)


def _condconv_keys(model: nn.Module) -> List[str]:
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, CondConv2d):
            prefix = f"{name}." if name else ""
            keys.append(prefix + "weight")
            if module.bias is not None:
                keys.append(prefix + "bias")
    return keys


try:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
except ImportError:  # condconv_det.checkpoint's converters work without detectron2
    DetectionCheckpointer = None

if DetectionCheckpointer is not None:

    class CondConvCheckpointer(DetectionCheckpointer):
        """detectron2's ``DetectionCheckpointer`` that upcycles static weights into CondConv
        layers, so ``MODEL.WEIGHTS`` can name a static checkpoint directly: detectron2's MSRA
        ``R-50.pkl``, a torchvision-converted ``.pkl``, or any static model's ``.pth``.

        A kernel whose shape is one expert's (``(O, I/g, kh, kw)`` for a ``(E, O, I/g, kh, kw)``
        CondConv weight) is upcycled as :func:`upcycle_state_dict` does; the routers then start
        at uniform routing unless the checkpoint has them. detectron2's own checkpointer would
        skip such kernels with a shape warning, leaving the CondConv layers untrained.

        Checkpoints and ``last_checkpoint`` are written atomically
        (:func:`condconv_det.file_io.atomic_write`): fvcore truncates the file and then writes
        it, so a kill during a save would leave the only checkpoint empty or cut short, under
        its normal name.
        """

        def __init__(self, model: nn.Module, save_dir: str = "", *, match: str = "strict", **kwargs: Any):
            """As ``DetectionCheckpointer``; ``match`` is how a checkpoint given to :meth:`load`
            must fit the model (:data:`WEIGHTS_MATCHES`, ``MODEL.WEIGHTS_MATCH``). Resuming a
            run (:meth:`resume_or_load` with ``resume=True``) always needs a checkpoint that
            fits exactly."""
            if match not in WEIGHTS_MATCHES:
                raise ValueError(f"MODEL.WEIGHTS_MATCH must be one of {WEIGHTS_MATCHES}, got {match!r}")
            super().__init__(model, save_dir, **kwargs)
            self.match = match
            self._loading: Optional[str] = None
            self._model_loaded = False

        def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
            """As fvcore's ``Checkpointer.load``, with errors that name the file: one that
            cannot be read (:class:`UnreadableCheckpointError`), one that does not fit the model
            as ``match`` asks (:class:`CheckpointMismatchError`, before the model is touched),
            and a training state that does not fit the trainer (a changed solver config)."""
            if path and "://" not in path and not os.path.isfile(path):
                if not os.path.exists(path):
                    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
                raise UnreadableCheckpointError(f"checkpoint {path!r} is not a file")
            self._loading, self._model_loaded = path, False
            try:
                return super().load(path, checkpointables=checkpointables)
            except (KeyError, ValueError, RuntimeError) as e:
                if not self._model_loaded or isinstance(e, (CheckpointMismatchError, UnreadableCheckpointError)):
                    raise
                # The weights loaded; the trainer's or optimizer's state did not.
                raise CheckpointMismatchError(
                    f"checkpoint {path!r}: its training state (iteration, optimizer, scheduler) "
                    f"does not fit this run ({type(e).__name__}: {e}). Resume with the config the "
                    "run was started with, or start a new OUTPUT_DIR with MODEL.WEIGHTS naming "
                    "this checkpoint to fine-tune from its weights."
                ) from e
            finally:
                self._loading = None

        def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
            """With ``resume`` and a checkpoint in the save folder: the newest checkpoint that
            can be read, with its training state (``last_checkpoint`` first; a file that cannot
            be read is reported and the next newest tried). Otherwise ``path``'s weights alone,
            fitting the model as ``match`` asks."""
            if not (resume and self.has_checkpoint()):
                return self.load(path, checkpointables=[])
            candidates = self.resume_candidates()
            failures = []
            match, self.match = self.match, "strict"
            try:
                for candidate in candidates:
                    try:
                        # Read first on its own: a failed read inside detectron2's load() leaves
                        # state behind on detectron2 main that breaks the next load().
                        _check_readable(candidate)
                        loaded = self.load(candidate)
                    except (UnreadableCheckpointError, FileNotFoundError) as e:
                        failures.append(str(e))
                        self.logger.warning(f"Cannot resume from {candidate}: {e}")
                        continue
                    if failures:
                        self.logger.warning(
                            f"Resumed from {candidate}, the newest checkpoint that could be read "
                            f"({len(failures)} newer could not: see above)."
                        )
                    return loaded
            finally:
                self.match = match
            raise UnreadableCheckpointError(
                f"no checkpoint in {self.save_dir!r} can be read, so the run cannot be resumed:\n  "
                + "\n  ".join(failures)
                + "\nMove the folder aside and start again without --resume, or give MODEL.WEIGHTS."
            )

        def resume_candidates(self) -> List[str]:
            """The checkpoints of the save folder, newest first: the one ``last_checkpoint``
            names, then the other ``.pth`` files by modification time."""
            named = self.get_checkpoint_file()
            others = [
                os.path.join(self.save_dir, f)
                for f in self.path_manager.ls(self.save_dir)
                if f.endswith(".pth") and os.path.join(self.save_dir, f) != named
            ]
            others.sort(key=lambda f: os.path.getmtime(f) if os.path.exists(f) else 0, reverse=True)
            return [named] + others

        def _load_file(self, filename: str) -> Dict[str, Any]:
            if os.path.isfile(filename) and os.path.getsize(filename) == 0:
                raise _empty_checkpoint(filename)
            try:
                loaded = super()._load_file(filename)
            except AssertionError:
                raise
            except Exception as e:  # noqa: BLE001 (whatever torch.load met, the file is unusable)
                raise UnreadableCheckpointError(_unreadable_reason(filename, e)) from e
            if not isinstance(loaded.get("model"), Mapping):
                raise UnreadableCheckpointError(_not_a_state_dict(filename, loaded["model"]))
            return loaded

        def save(self, name: str, **kwargs: Any) -> None:
            """As fvcore's ``Checkpointer.save``, written atomically to a local folder."""
            if not self.save_dir or not self.save_to_disk:
                return
            if "://" in self.save_dir:  # a remote store: fvcore's own writer
                return super().save(name, **kwargs)
            data = {"model": self.model.state_dict()}
            for key, obj in self.checkpointables.items():
                data[key] = obj.state_dict()
            data.update(kwargs)
            basename = f"{name}.pth"
            save_file = os.path.join(self.save_dir, basename)
            self.logger.info(f"Saving checkpoint to {save_file}")
            os.makedirs(self.save_dir, exist_ok=True)
            atomic_write(save_file, lambda f: torch.save(data, f))
            self.tag_last_checkpoint(basename)

        def tag_last_checkpoint(self, last_filename_basename: str) -> None:
            """Names the last checkpoint in ``last_checkpoint``, atomically."""
            if "://" in self.save_dir:
                return super().tag_last_checkpoint(last_filename_basename)
            path = os.path.join(self.save_dir, "last_checkpoint")
            atomic_write(path, lambda f: f.write(last_filename_basename), mode="w")

        def _load_model(self, checkpoint):
            model_sd = self.model.state_dict()
            condconv = set(_condconv_keys(self.model))
            if checkpoint.get("matching_heuristics", False):
                self._convert_ndarray_to_tensor(checkpoint["model"])
                # Match names against the static view of the model: one expert's shape.
                static_view = {k: (v[0] if k in condconv else v) for k, v in model_sd.items()}
                checkpoint["model"] = align_and_update_state_dicts(
                    static_view,
                    checkpoint["model"],
                    c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
                )
                checkpoint["matching_heuristics"] = False
            weights = checkpoint["model"]
            static_keys = [
                k for k in condconv
                if k in weights and tuple(weights[k].shape) == tuple(model_sd[k].shape[1:])
            ]
            if static_keys:
                upcycled = upcycle_state_dict({k: weights.pop(k) for k in static_keys}, self.model)
                for key, value in upcycled.items():
                    weights.setdefault(key, value)
                # Routers the upcycling leaves alone (beside a static kernel) keep their init.
                for name, router in _routers(self.model).items():
                    for key, value in router.state_dict().items():
                        weights.setdefault(f"{name}.{key}" if name else key, value)
                self.logger.info(
                    f"Upcycled {len(static_keys)} static kernels into CondConv experts "
                    "(uniform routing: the model computes what the static checkpoint does)."
                )
            self._check_fit(model_sd, weights)
            incompatible = super()._load_model(checkpoint)
            self._model_loaded = True
            return incompatible

        def _check_fit(self, model_sd: Mapping[str, torch.Tensor], weights: Mapping[str, Any]) -> None:
            weights = _strip_ddp_prefix(weights)
            missing, unexpected, shapes = state_dict_differences(model_sd, weights)
            # FrozenBN fills statistics a file lacks (Caffe2 models fold them into the affine).
            frozen = _frozen_bn_statistics(self.model)
            missing = [k for k in missing if k not in frozen]
            if self.match == "pretrained":
                missing = _half_loaded_condconv(self.model, missing, weights)
            elif self.match == "partial":
                fitting = set(model_sd) & set(weights)
                if len(fitting) > len(shapes):
                    return
            if not (missing or unexpected or shapes):
                return
            name = self._loading or "the checkpoint"
            hint = {
                "strict": "Give a checkpoint of this model (the config it was trained with, the "
                "same experts and classes); set MODEL.WEIGHTS_MATCH pretrained to load pretrained "
                "weights under new layers, or partial to load whatever fits.",
                "pretrained": "Convert pretrained weights for this config with "
                "tools/convert_pretrained.py, or set MODEL.WEIGHTS_MATCH partial to load "
                "whatever fits.",
                "partial": "Not one tensor of it fits this model: is it a checkpoint of another "
                "architecture?",
            }[self.match]
            raise CheckpointMismatchError(
                mismatch_report(f"checkpoint {name!r}", missing, unexpected, shapes)
                + f"\n  (MODEL.WEIGHTS_MATCH {self.match}) {hint}"
            )

    def _half_loaded_condconv(model: nn.Module, missing: List[str], weights: Mapping[str, Any]) -> List[str]:
        """The missing keys of the routed groups (a router and the CondConv layers in the
        module that holds it) that the checkpoint fills only in part: experts without their
        router, or a router without its experts."""
        missing = set(missing)
        condconvs = {n: m for n, m in model.named_modules() if isinstance(m, CondConv2d)}
        out = set()
        for router_name, router in _routers(model).items():
            owner = router_name.rsplit(".", 1)[0] if "." in router_name else ""
            keys = [f"{router_name}.{k}" for k in router.state_dict()]
            for name, conv in condconvs.items():
                if owner == "" or name == owner or name.startswith(owner + "."):
                    keys += [f"{name}.{k}" for k in conv.state_dict() if not k.startswith("router.")]
            if any(k in weights for k in keys):
                out.update(k for k in keys if k in missing)
        return sorted(out)

    def _frozen_bn_statistics(model: nn.Module) -> set:
        from detectron2.layers import FrozenBatchNorm2d

        return {
            f"{name}.{stat}" if name else stat
            for name, m in model.named_modules()
            if isinstance(m, FrozenBatchNorm2d)
            for stat in ("running_mean", "running_var")
        }

    def _strip_ddp_prefix(weights: Mapping[str, Any]) -> Mapping[str, Any]:
        if weights and all(k.startswith("module.") for k in weights):
            return {k[len("module."):]: v for k, v in weights.items()}
        return weights

    def _empty_checkpoint(filename: str) -> UnreadableCheckpointError:
        return UnreadableCheckpointError(f"checkpoint {filename!r} is empty (0 bytes): a save was probably killed")

    def _check_readable(filename: str) -> None:
        """Raises :class:`UnreadableCheckpointError` (or FileNotFoundError) unless ``filename``
        reads as a checkpoint; a zip checkpoint is memory-mapped, not read whole."""
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"checkpoint {filename!r} does not exist")
        if os.path.getsize(filename) == 0:
            raise _empty_checkpoint(filename)
        try:
            loaded = torch.load(filename, map_location="cpu", weights_only=True, mmap=_starts_as_a_zip(filename))
        except Exception as e:  # noqa: BLE001 (whatever torch.load met, the file is unusable)
            raise UnreadableCheckpointError(_unreadable_reason(filename, e)) from e
        if not isinstance(loaded, Mapping):
            raise UnreadableCheckpointError(_not_a_state_dict(filename, loaded))

    def _starts_as_a_zip(filename: str) -> bool:
        """Whether the file begins as torch.save's zip archives do (so a failed read means a
        damaged or cut-short file rather than another format)."""
        try:
            with open(filename, "rb") as f:
                return f.read(4) == b"PK\x03\x04"
        except OSError:
            return False

    def _not_a_state_dict(filename: str, content: Any) -> str:
        return (
            f"checkpoint {filename!r} holds a {type(content).__name__}, not a state dict (a dict "
            "of tensors, or a dict with one under 'model')"
        )

    def _unreadable_reason(filename: str, error: BaseException) -> str:
        text = str(error)
        if isinstance(error, RuntimeError) and "__contains__" in text:
            # detectron2 looked for "model" in what torch.load returned: not a dict.
            try:
                return _not_a_state_dict(filename, torch.load(filename, map_location="cpu", weights_only=True))
            except Exception:  # noqa: BLE001
                pass
        if isinstance(error, pickle.UnpicklingError) and "weights_only" in text.lower():
            what = (
                "holds Python objects other than tensors, numbers and containers, which are "
                "not loaded for safety; if you trust it, re-save its state dict alone with "
                "torch.save"
            )
        elif isinstance(error, EOFError) or _starts_as_a_zip(filename):
            what = "is cut short or corrupt (a save was probably killed): use an earlier checkpoint"
        else:
            what = f"is not a PyTorch checkpoint ({type(error).__name__}: {text.splitlines()[0][:200] if text else ''})"
        return f"checkpoint {filename!r} {what}"

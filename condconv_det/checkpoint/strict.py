"""Fitting a state dict to a model: the differences, a report of them, and exact loading."""

import re
from typing import List, Mapping, Optional, Tuple

import torch
from torch import nn

__all__ = [
    "CheckpointMismatchError",
    "UnreadableCheckpointError",
    "WEIGHTS_MATCHES",
    "load_checkpoint_strict",
    "mismatch_report",
    "state_dict_differences",
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


def load_checkpoint_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, ignore: Optional[List[str]] = None
) -> None:
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
            + "\n  Convert it for this model with tools/convert_pretrained.py (matching --source "
            "and the same config / arch / experts)."
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


def mismatch_report(
    what: str, missing: List[str], unexpected: List[str], shapes: List[str], limit: int = 20
) -> str:
    """``"<what> does not fit the model:"`` and the first ``limit`` keys of each kind."""
    lines = [f"{what} does not fit the model:"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)

"""Checkpoints: pretrained weights renamed and converted (:mod:`.convert`), static weights
upcycled into CondConv layers (:mod:`.upcycle`), exact fitting of a state dict to a model
(:mod:`.strict`) and detectron2's checkpointer with all of these, with
:func:`load_weights_exact` for inference (:mod:`.checkpointer`, which alone needs detectron2:
the rest works with plain PyTorch)."""

from .convert import (
    TimmEfficientNet,
    timm_efficientnet_to_condconv,
    timm_efficientnet_variant,
    torchvision_mobilenet_v2_to_condconv,
    torchvision_resnet_to_detectron2,
)
from .strict import (
    WEIGHTS_MATCHES,
    CheckpointMismatchError,
    UnreadableCheckpointError,
    load_checkpoint_strict,
    mismatch_report,
    state_dict_differences,
)
from .upcycle import upcycle_state_dict

__all__ = [
    "CheckpointMismatchError",
    "CondConvCheckpointer",
    "TimmEfficientNet",
    "UnreadableCheckpointError",
    "WEIGHTS_MATCHES",
    "load_checkpoint_strict",
    "load_weights_exact",
    "mismatch_report",
    "state_dict_differences",
    "timm_efficientnet_to_condconv",
    "timm_efficientnet_variant",
    "torchvision_mobilenet_v2_to_condconv",
    "torchvision_resnet_to_detectron2",
    "upcycle_state_dict",
]


def __getattr__(name: str):
    # The checkpointer needs detectron2; imported when first asked for, so that the converters
    # and upcycling work in a plain PyTorch environment.
    if name in ("CondConvCheckpointer", "load_weights_exact"):
        from . import checkpointer

        return getattr(checkpointer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

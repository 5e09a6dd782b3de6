"""``CondConvCheckpointer``: detectron2's checkpointer with upcycling, exact fitting of what it
loads, readable errors for files it cannot read, atomic saves and a resume that falls back to
the newest checkpoint that can be read."""

import os
import pickle
from typing import Any, Dict, List, Mapping, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from torch import nn

from condconv_det.file_io import atomic_write
from condconv_det.layers import CondConv2d

from .strict import (
    WEIGHTS_MATCHES,
    CheckpointMismatchError,
    UnreadableCheckpointError,
    mismatch_report,
    state_dict_differences,
)
from .upcycle import _condconv_keys, _routers, check_upcycle_routers, upcycle_state_dict

__all__ = ["CondConvCheckpointer", "load_weights_exact"]


class CondConvCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` that upcycles static weights into CondConv
    layers, so ``MODEL.WEIGHTS`` can name a static checkpoint directly: detectron2's MSRA
    ``R-50.pkl``, a torchvision-converted ``.pkl``, or any static model's ``.pth``.

    A kernel whose shape is one expert's (``(O, I/g, kh, kw)`` for a ``(E, O, I/g, kh, kw)``
    CondConv weight) is upcycled as :func:`upcycle_state_dict` does; the routers then start
    at uniform routing (or keep their initialisation, ``upcycle_routers``) unless the
    checkpoint has them. detectron2's own checkpointer would skip such kernels with a shape
    warning, leaving the CondConv layers untrained.

    Checkpoints and ``last_checkpoint`` are written atomically
    (:func:`condconv_det.file_io.atomic_write`): fvcore truncates the file and then writes
    it, so a kill during a save would leave the only checkpoint empty or cut short, under
    its normal name.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        match: str = "strict",
        upcycle_noise: float = 0.01,
        upcycle_routers: str = "uniform",
        **kwargs: Any,
    ):
        """As ``DetectionCheckpointer``; ``match`` is how a checkpoint given to :meth:`load`
        must fit the model (:data:`WEIGHTS_MATCHES`, ``MODEL.WEIGHTS_MATCH``). Resuming a
        run (:meth:`resume_or_load` with ``resume=True``) always needs a checkpoint that
        fits exactly. ``upcycle_noise`` and ``upcycle_routers`` are
        :func:`upcycle_state_dict`'s ``noise`` and ``routers`` (``MODEL.CONDCONV.UPCYCLE_NOISE``,
        ``UPCYCLE_ROUTERS``)."""
        if match not in WEIGHTS_MATCHES:
            raise ValueError(f"MODEL.WEIGHTS_MATCH must be one of {WEIGHTS_MATCHES}, got {match!r}")
        if not upcycle_noise >= 0:
            raise ValueError(f"MODEL.CONDCONV.UPCYCLE_NOISE must be >= 0, got {upcycle_noise!r}")
        check_upcycle_routers(upcycle_routers)
        super().__init__(model, save_dir, **kwargs)
        self.match = match
        self.upcycle_noise = upcycle_noise
        self.upcycle_routers = upcycle_routers
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
            if not self._model_loaded or isinstance(
                e, (CheckpointMismatchError, UnreadableCheckpointError)
            ):
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
        # In the model's order, not the set's: the upcycling noise is drawn from one seeded
        # generator key after key, and a set of strings is ordered by the process's hash seed,
        # which would give each run other experts.
        static_keys = [
            k
            for k in model_sd
            if k in condconv
            and k in weights
            and tuple(weights[k].shape) == tuple(model_sd[k].shape[1:])
        ]
        if static_keys:
            upcycled = upcycle_state_dict(
                {k: weights.pop(k) for k in static_keys},
                self.model,
                noise=self.upcycle_noise,
                routers=self.upcycle_routers,
            )
            for key, value in upcycled.items():
                weights.setdefault(key, value)
            # Routers the upcycling leaves alone (beside a static kernel, or asked to) keep
            # their init.
            for name, router in _routers(self.model).items():
                for key, value in router.state_dict().items():
                    weights.setdefault(f"{name}.{key}" if name else key, value)
            self.logger.info(
                f"Upcycled {len(static_keys)} static kernels into CondConv experts (routers "
                f"{'at their initialisation' if self.upcycle_routers == 'init' else 'uniform'}: "
                "the model computes what the static checkpoint does)."
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


def load_weights_exact(model: nn.Module, path: str) -> None:
    """Loads the weights of the checkpoint ``path`` into ``model``, every tensor of it and
    nothing else, as a model is loaded for inference (demo, export, routing analysis).

    :class:`CondConvCheckpointer` with ``match="strict"`` and no training state: a static
    kernel is upcycled into its CondConv layer's experts as in training, and anything else
    that does not fit (a missing or extra tensor, another shape) is refused before the model
    is touched, so that no layer keeps its random initialisation unnoticed.

    Args:
        model: the model to fill, built from the config the checkpoint was trained with.
        path: a checkpoint file or URL; "" leaves the model as it is (detectron2's convention
            for ``MODEL.WEIGHTS``).

    Raises:
        FileNotFoundError: a local ``path`` that does not exist.
        UnreadableCheckpointError: a file that cannot be read as a checkpoint.
        CheckpointMismatchError: weights that do not fit ``model``; the message lists them.
    """
    CondConvCheckpointer(model, match="strict").load(path, checkpointables=[])


def _half_loaded_condconv(
    model: nn.Module, missing: List[str], weights: Mapping[str, Any]
) -> List[str]:
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
        return {k[len("module.") :]: v for k, v in weights.items()}
    return weights


def _empty_checkpoint(filename: str) -> UnreadableCheckpointError:
    return UnreadableCheckpointError(
        f"checkpoint {filename!r} is empty (0 bytes): a save was probably killed"
    )


def _check_readable(filename: str) -> None:
    """Raises :class:`UnreadableCheckpointError` (or FileNotFoundError) unless ``filename``
    reads as a checkpoint; a zip checkpoint is memory-mapped, not read whole."""
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint {filename!r} does not exist")
    if os.path.getsize(filename) == 0:
        raise _empty_checkpoint(filename)
    try:
        loaded = torch.load(
            filename, map_location="cpu", weights_only=True, mmap=_starts_as_a_zip(filename)
        )
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
            return _not_a_state_dict(
                filename, torch.load(filename, map_location="cpu", weights_only=True)
            )
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
        first_line = text.splitlines()[0][:200] if text else ""
        what = f"is not a PyTorch checkpoint ({type(error).__name__}: {first_line})"
    return f"checkpoint {filename!r} {what}"

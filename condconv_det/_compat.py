"""Workarounds for detectron2: for its 0.6 release (what pip installs) and for gaps that its main
branch shares. Each says what it works around and when it can go; the code that needs one
imports it from here, so that dropping 0.6 is a matter of this file and its importers.

- :func:`launch`: 0.6's ``launch`` requires CUDA and NCCL. Goes with 0.6 (main runs CPU
  processes with gloo): use ``detectron2.engine.launch``.
- :func:`create_ddp_model`: detectron2's (0.6 and main) gives DDP GPU ``device_ids`` for CPU
  models too, which DDP refuses. Goes when detectron2 leaves them out for CPU models.
- :func:`has_native_coco_eval`: 0.6's ``COCOEvaluator`` fails without detectron2's C++ ops.
  Goes with 0.6 (main falls back to pycocotools itself), with ``use_fast_impl`` in
  ``build_coco_evaluator`` and ``configs/common/data/``.
- :class:`OptimizerStateMixin`: 0.6's ``DefaultTrainer`` checkpoints neither the optimizer nor
  the AMP grad scaler. Goes with 0.6 (main saves them in ``"_trainer"``).
- :func:`simple_trainer_saves_optimizer`: the same for ``SimpleTrainer`` in the 0.6 release
  (later 0.6 builds and main save them). Goes with 0.6.
- :func:`last_eval_results`: ``DefaultTrainer.train`` (0.6 and main) returns the last
  evaluation only when ``TEST.EXPECTED_RESULTS`` is set; this reads the private attribute that
  holds it. Goes when detectron2 returns it.
- :func:`import_detectron2_export`: 0.6's ``detectron2.export`` imports caffe2, which PyTorch
  no longer ships. Goes with 0.6 (main guards that import): ``import detectron2.export.<name>``.
"""

import importlib
import logging
import os
import socket
import sys
import types
from datetime import timedelta
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "OptimizerStateMixin",
    "create_ddp_model",
    "has_native_coco_eval",
    "import_detectron2_export",
    "last_eval_results",
    "launch",
    "simple_trainer_saves_optimizer",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Runs ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes.

    Same arguments as :func:`detectron2.engine.launch`, which runs the CUDA jobs. Without CUDA,
    ``num_gpus_per_machine`` processes are spawned per machine with the gloo backend (set
    ``MODEL.DEVICE cpu``), so ``--num-gpus N`` means "N processes" with either detectron2.
    """
    from detectron2.engine import launch as d2_launch

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1 or torch.cuda.is_available():
        d2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info("CUDA is not available: running %d CPU processes with the gloo backend", world_size)
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            tuple(args),
            timeout,
        ),
        daemon=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(
    local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout
):
    rank = machine_rank * per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    # comm.get_local_rank()/get_local_size() need the group of the processes on this machine.
    if hasattr(comm, "create_local_process_group"):  # upstream main
        comm.create_local_process_group(per_machine)
    else:  # detectron2 0.6: every process creates every machine's group, keeps its own
        for i in range(world_size // per_machine):
            group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Like detectron2's ``create_ddp_model``, but CPU models get no ``device_ids``."""
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        on_cuda = next(model.parameters()).device.type == "cuda"
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    return DistributedDataParallel(model, **kwargs)


def has_native_coco_eval() -> bool:
    """Whether detectron2 was built with its C++ COCO evaluator (``COCOeval_opt``)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalAsNativeParams")


class OptimizerStateMixin:
    """Put before ``DefaultTrainer`` in a trainer's bases: its checkpoints hold the optimizer
    (and the AMP grad scaler), so ``--resume`` continues with momentum on detectron2 0.6 too.
    Expects the trainer's ``optimizer`` and ``_trainer`` attributes, as ``DefaultTrainer``
    has them."""

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        if "_trainer" not in ret:  # detectron2 0.6: the optimizer would not be saved
            ret["optimizer"] = self.optimizer.state_dict()
            scaler = getattr(self._trainer, "grad_scaler", None)
            if scaler is not None:
                ret["grad_scaler"] = scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # upstream main restored the optimizer itself
            return
        if "optimizer" not in state_dict:
            logger.warning("The checkpoint holds no optimizer state: momentum restarts from zero.")
            return
        self.optimizer.load_state_dict(state_dict["optimizer"])
        scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler is not None and "grad_scaler" in state_dict:
            scaler.load_state_dict(state_dict["grad_scaler"])


def simple_trainer_saves_optimizer() -> bool:
    """Whether detectron2's ``SimpleTrainer.state_dict`` holds the optimizer; where it does not
    (the v0.6 release), a training script hands the optimizer to the checkpointer instead."""
    from detectron2.engine import SimpleTrainer, TrainerBase

    return SimpleTrainer.state_dict is not TrainerBase.state_dict


def last_eval_results(trainer) -> Optional[Dict[str, Any]]:
    """The results of a ``DefaultTrainer``'s last evaluation, or None before any."""
    return getattr(trainer, "_last_eval_results", None)


def import_detectron2_export(name: str) -> types.ModuleType:
    """``detectron2.export.<name>``, also where ``import detectron2.export`` fails.

    detectron2 0.6's ``detectron2/export/__init__.py`` starts with ``from .api import *``, which
    imports caffe2; PyTorch wheels have not shipped caffe2 since 2.0, so ``import
    detectron2.export`` (and with it any submodule, since a submodule import runs the package's
    ``__init__`` first) fails. ``flatten`` and ``torchscript`` do not use caffe2: when the
    package import fails, they are loaded under a bare ``detectron2.export`` package that has
    their directory as its path and nothing else. Upstream main guards the caffe2 import itself,
    and there the ordinary import is used.
    """
    try:
        importlib.import_module("detectron2.export")
    except ImportError as e:
        import detectron2

        if "caffe2" not in str(e):
            raise
        # A failed package import leaves no entry in sys.modules; put a bare package there so
        # that the submodules' relative imports (``from .torchscript_patch import ...``) work.
        package = types.ModuleType("detectron2.export")
        package.__path__ = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
        package.__doc__ = "detectron2.export without its caffe2 parts (see condconv_det._compat)"
        sys.modules["detectron2.export"] = package
    return importlib.import_module(f"detectron2.export.{name}")

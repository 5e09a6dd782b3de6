"""``launch`` that also runs multi-process training on CPU-only machines.

detectron2 0.6's ``launch`` asserts CUDA in every worker and always uses NCCL; upstream main falls
back to gloo. This wrapper hands CUDA jobs to detectron2 and runs CPU jobs itself with gloo, so
``--num-gpus N`` means "N processes" on a machine without GPUs with either detectron2.
"""

import logging
import socket
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["argument_parser", "launch"]


def argument_parser(epilog: str = None):
    """detectron2's command-line arguments of the training tools, and ``--overwrite`` (start a
    new run in an output folder that holds an earlier run's checkpoints)."""
    parser = default_argument_parser(epilog)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an output folder that holds an earlier run's checkpoints "
        "(without it, such a folder is refused unless --resume continues the run)",
    )
    return parser


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

    Same arguments as :func:`detectron2.engine.launch`. Without CUDA, ``num_gpus_per_machine``
    processes are spawned per machine with the gloo backend (set ``MODEL.DEVICE cpu``).
    """
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
    logging.getLogger(__name__).info(
        "CUDA is not available: running %d CPU processes with the gloo backend", world_size
    )
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

"""Process-group helpers that are no-ops without ``torch.distributed``.

``fit`` never starts processes: under ``torchrun`` (``WORLD_SIZE > 1`` in the
environment) it joins the process group that the launcher describes, NCCL on
GPUs and gloo on CPUs.
"""

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist

# a rank that dies or hangs makes the others fail after this long rather than
# wait forever in a collective
DEFAULT_TIMEOUT_S = 600


def is_distributed():
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    """Rank of this process, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """True on rank 0 and when not distributed."""
    return get_rank() == 0


def launched_distributed():
    """Whether a launcher such as torchrun started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(timeout_s=DEFAULT_TIMEOUT_S):
    """Join the process group described by torchrun's environment variables.

    Does nothing when ``WORLD_SIZE`` is 1 or unset, or when the group is
    already initialised (by the user's script, say).

    Parameters
    ----------
    timeout_s : float, default=600
        Collective operations waiting longer than this raise an error.

    Returns
    -------
    distributed : bool
        Whether a multi-process group is running.
    """
    if not launched_distributed() or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        # a group left alive at interpreter exit can abort the process from
        # the backend's threads ("terminate called ..."): close the one we made
        atexit.register(_destroy)
    return is_distributed()


def shutdown_distributed():
    """Wait for every rank, then close the process group (end of a script).

    Closing without the barrier lets a fast rank tear down its connections
    while a slower one still closes its own, which can abort the slower
    process at exit.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _destroy():
    # no barrier: after a failure on one rank it would wait for the others
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_rank():
    """This process's index on its machine (``LOCAL_RANK``), 0 by default."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@torch.no_grad()
def all_gather_cat(tensor):
    """Concatenate ``tensor`` from every rank along dim 0 (rank order).

    No gradient flows through the result: used for keys, which have none.
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_(tensor, op="sum"):
    """In-place sum (or ``"max"``) over ranks; returns ``tensor``."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor, src=0):
    """In-place copy of rank ``src``'s ``tensor`` to every rank; returns it."""
    if is_distributed():
        dist.broadcast(tensor, src)
    return tensor

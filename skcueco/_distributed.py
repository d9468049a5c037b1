"""Rank and world-size helpers that are no-ops without ``torch.distributed``."""

import torch.distributed as dist


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

"""Which torch device an estimator runs on."""

import torch

from .distributed import launched_distributed, local_rank


def resolve_device(device):
    """``"auto"`` -> CUDA, then MPS, then CPU; other names are checked.

    Parameters
    ----------
    device : str or torch.device

    Returns
    -------
    device : torch.device
    """
    if device == "auto":
        if torch.cuda.is_available():
            # under torchrun each process owns the GPU of its local rank
            return torch.device("cuda", local_rank() if launched_distributed() else
                                torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device name.") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} was requested but no CUDA GPU is available; "
                "use device='auto' or 'cpu'."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r} does not exist: {torch.cuda.device_count()} "
                "CUDA device(s) are visible."
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device='mps' was requested but MPS is not available.")
    return device


def device_available(device):
    """Whether ``device`` (a torch.device) can be used in this process."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()
    return False

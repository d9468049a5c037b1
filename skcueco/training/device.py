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


def cpu_has_native_bf16():
    """Whether this processor computes bfloat16 in hardware, as PyTorch sees it.

    True on x86 processors with AVX-512 BF16 or AMX-BF16 instructions, where
    PyTorch's CPU kernels (oneDNN) run bf16 convolutions and matrix products
    natively; there a bf16 autocast trains about 1.6-1.8 times as fast as
    float32 (docs/training.rst). False elsewhere, including on processors
    where PyTorch would emulate bf16 with float32 arithmetic, and when this
    PyTorch cannot tell.

    Returns
    -------
    native : bool
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = capabilities()
        return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
    # older releases: the checks torch.cpu is built on (AMX tiles come with
    # AMX-BF16 on every processor that has them)
    cpu = getattr(torch._C, "_cpu", None)
    checks = [getattr(cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)

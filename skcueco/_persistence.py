"""Pickling of estimators that hold torch modules, across devices.

A model fitted on a GPU must unpickle on a CPU-only machine. Plain pickling of
CUDA tensors would fail there, so torch objects are stored as ``torch.save``
blobs and re-mapped onto an available device when loaded.
"""

import io
import warnings

import torch


class _TorchBlob:
    """A ``torch.save`` payload inside a pickle (re-mapped on load)."""

    def __init__(self, data):
        self.data = data


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


class TorchStateMixin:
    """``__getstate__``/``__setstate__`` for estimators with a ``device_``.

    Torch modules and tensors among the attributes are serialised with
    ``torch.save``; on load they go to ``device_`` if it exists here, else to
    the CPU with a warning (and ``device_`` is updated).
    """

    def __getstate__(self):
        state = dict(super().__getstate__())  # may be the live __dict__
        for key, value in state.items():
            if isinstance(value, (torch.nn.Module, torch.Tensor)):
                buffer = io.BytesIO()
                torch.save(value, buffer)
                state[key] = _TorchBlob(buffer.getvalue())
        if "device_" in state:
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        device = state.get("device_")
        if device is not None:
            device = torch.device(device)
            if not device_available(device):
                warnings.warn(
                    f"This model was fitted on {device}, which is not available here; "
                    "it was loaded onto the CPU.", UserWarning,
                )
                device = torch.device("cpu")
            state["device_"] = device
        for key, value in state.items():
            if isinstance(value, _TorchBlob):
                # the blob comes from this library's own pickle, which already
                # executes code on load; weights_only would reject the modules
                state[key] = torch.load(
                    io.BytesIO(value.data), map_location=device or "cpu", weights_only=False
                )
        super().__setstate__(state)

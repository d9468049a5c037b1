"""Pickling of estimators that hold torch modules, across devices.

A model fitted on a GPU must unpickle on a CPU-only machine. Plain pickling of
CUDA tensors would fail there, so torch objects are stored as ``torch.save``
blobs and re-mapped onto an available device when loaded.
"""

import io
import json
import numbers
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.utils.validation import check_is_fitted

from .data.preprocess import Preprocess
from .training.device import device_available, resolve_device
from .training.distributed import is_main_process
from .training.engine import copy_state
from .data.validation import InputSpec
from ._version import __version__
from .backbones import build_backbone
from .nn.heads import ProjectionHead


class _TorchBlob:
    """A ``torch.save`` payload inside a pickle (re-mapped on load)."""

    def __init__(self, data):
        self.data = data


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


# -- the safe file format of CueCoEmbedder.save ------------------------------------
FILE_FORMAT = "skcueco.CueCoEmbedder"


def save_embedder(est, path):
    """Body of :meth:`CueCoEmbedder.save`."""
    check_is_fitted(est)
    if not is_main_process():
        return  # under torchrun every rank holds the same model: rank 0 writes
    params = est.get_params(deep=False)
    if isinstance(params["backbone"], torch.nn.Module) or callable(params["augmentation"]):
        raise ValueError(
            "save() stores parameters as data and cannot store a custom backbone "
            "module or a callable augmentation; use joblib.dump for this model."
        )
    params["callbacks"] = None
    if not isinstance(params["random_state"], (numbers.Integral, type(None))):
        params["random_state"] = None
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    spec = est._input_spec
    meta = {
        "format": FILE_FORMAT,
        "version": __version__,
        "params": params,
        "input_spec": [spec.kind, list(spec.shape), spec.channels_last],
        "n_features_in": int(est.n_features_in_),
        "feature_names_in": (list(map(str, est.feature_names_in_))
                             if hasattr(est, "feature_names_in_") else None),
        "feature_dim": int(est._n_features_out),
        "history": est.history_.to_dict(orient="list"),
    }
    payload = {
        "meta": json.dumps(meta),
        "encoder": copy_state(est.encoder_.state_dict()),
        "projector": copy_state(est._projector.state_dict()),
        "preprocess": copy_state(est._preprocess.state_dict()),
        "cluster_centers": torch.from_numpy(est.cluster_centers_),
    }
    torch.save(payload, path)


def load_embedder(cls, path):
    """Body of :meth:`CueCoEmbedder.load`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
        assert meta["format"] == FILE_FORMAT
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(
            f"{path!s} is not a skcueco model file, or it was altered; refusing "
            f"to load it ({type(exc).__name__}: {exc})."
        ) from exc
    saved = meta["version"].split(".")[:2]
    if saved != __version__.split(".")[:2]:
        raise ValueError(
            f"{path!s} was saved by skcueco {meta['version']}, which is not "
            f"compatible with this version ({__version__}); save it again "
            "with a matching version."
        )
    params = dict(meta["params"])
    for name in ("image_shape", "image_size"):
        if isinstance(params.get(name), list):
            params[name] = tuple(params[name])
    est = cls(**params)
    kind, shape, channels_last = meta["input_spec"]
    spec = InputSpec(kind, tuple(shape), channels_last)
    try:
        device = resolve_device(est.device)
    except ValueError:
        warnings.warn(f"device={est.device!r} is not available here; loading "
                      "onto the CPU.", UserWarning)
        device = torch.device("cpu")
    try:
        with torch.random.fork_rng(devices=[]):
            encoder, feature_dim = build_backbone(
                est.backbone, input_kind=spec.kind, input_shape=spec.shape)
            projector = ProjectionHead(feature_dim, est.hidden_dim, est.projection_dim)
        encoder.load_state_dict(payload["encoder"])
        projector.load_state_dict(payload["projector"])
        pre = payload["preprocess"]
        preprocess = Preprocess(spec, pre["offset"], pre["scale"])
        centers = payload["cluster_centers"].numpy()
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path!s} holds weights that do not fit its parameters: {exc}") from exc
    est.encoder_ = encoder.to(device).eval()
    est._projector = projector.to(device).eval()
    est._preprocess = preprocess.to(device)
    est.cluster_centers_ = centers.copy()
    est.history_ = pd.DataFrame(meta["history"])
    est.n_iter_ = len(est.history_)
    est.n_features_in_ = meta["n_features_in"]
    if meta["feature_names_in"] is not None:
        est.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
    est.image_shape_ = tuple(spec.shape) if spec.kind == "image" else None
    est._input_spec = spec
    est.device_ = device
    est._n_features_out = meta["feature_dim"]
    return est

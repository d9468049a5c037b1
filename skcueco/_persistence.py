"""Pickling across devices and the safe model file format.

A model fitted on a GPU must unpickle on a CPU-only machine. Plain pickling of
CUDA tensors would fail there, so torch objects are stored in one
``torch.save`` blob and re-mapped onto an available device when loaded.

``CueCoEmbedder.save`` writes, and ``load`` reads, a file of tensors and
JSON (:func:`save_embedder`, :func:`load_embedder`), written atomically by
:func:`~skcueco.training.checkpoint.atomic_save`. Reading checks everything
it can before it allocates: the metadata against sane bounds and against the
shapes of the stored tensors (docs/reliability.rst). Checkpoints are the
business of :mod:`skcueco.training.checkpoint`.
"""

import io
import json
import math
import numbers
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints
from sklearn.utils.validation import check_is_fitted

from .data.preprocess import Preprocess
from .training.trained import Trained
from .training.device import device_available, resolve_device
from .training.distributed import is_main_process
from .training.checkpoint import LOADED_BEFORE, atomic_save, check_version
from .training.engine import copy_state
from .training.trained import standardisation  # noqa: F401  (re-exported for old pickles)
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
        # one blob for all torch objects, so that objects shared between
        # attributes (``encoder_`` is the trained model's encoder) stay shared
        torch_values = {key: value for key, value in state.items()
                        if isinstance(value, (torch.nn.Module, torch.Tensor, Trained))}
        if torch_values:
            buffer = io.BytesIO()
            torch.save(torch_values, buffer)
            for key in torch_values:
                del state[key]
            state["_torch_blob"] = _TorchBlob(buffer.getvalue())
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
        blob = state.pop("_torch_blob", None)
        if blob is not None:
            state.update(_torch_load_blob(blob, device))
        for key, value in state.items():
            if isinstance(value, _TorchBlob):  # pickled by an earlier version
                state[key] = _torch_load_blob(value, device)
        if "encoder_" in state and "embedding_mean_" not in state:
            # pickled before embeddings were standardised: the raw features
            n = state["_n_features_out"]
            state["embedding_mean_"] = np.zeros(n, dtype=np.float32)
            state["embedding_scale_"] = np.ones(n, dtype=np.float32)
        super().__setstate__(state)


def _torch_load_blob(blob, device):
    # the blob comes from this library's own pickle, which already executes
    # code on load; weights_only would reject the modules
    return torch.load(io.BytesIO(blob.data), map_location=device or "cpu", weights_only=False)


def trained_from_pickle(state, params):
    """A :class:`~skcueco.training.trained.Trained` from the attributes of an older pickle."""
    return Trained(
        encoder=state["encoder_"], projector=state["_projector"],
        preprocess=state["_preprocess"], centroids=torch.from_numpy(state["cluster_centers_"]),
        embedding_mean=state["embedding_mean_"], embedding_scale=state["embedding_scale_"],
        spec=state["_input_spec"], device=state["device_"],
        feature_dim=int(state["_n_features_out"]), channels_last=params["channels_last"],
        backbone=params["backbone"] if isinstance(params["backbone"], str) else None,
        history=state["history_"].to_dict(orient="list"),
        train_state=state.get("_train_state"),
        resolved={key: state[key + "_"] for key in
                  ("queue_size", "cluster_warmup", "cluster_ramp", "batch_size")
                  if key + "_" in state},
    )


# -- the safe file format of CueCoEmbedder.save ------------------------------------
FILE_FORMAT = "skcueco.CueCoEmbedder"


def save_embedder(est, path, training_state=True):
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
    trained = est._trained
    spec = trained.spec
    meta = {
        "format": FILE_FORMAT,
        "version": __version__,
        "params": params,
        "input_spec": [spec.kind, list(spec.shape), spec.channels_last],
        "n_features_in": int(est.n_features_in_),
        "feature_names_in": (list(map(str, est.feature_names_in_))
                             if hasattr(est, "feature_names_in_") else None),
        "feature_dim": int(trained.feature_dim),
        "history": est.history_.to_dict(orient="list"),
        # the "auto" settings as the run resolved them (plain values)
        "resolved": dict(trained.resolved),
    }
    payload = {
        "meta": json.dumps(meta),
        "encoder": copy_state(trained.encoder.state_dict()),
        "projector": copy_state(trained.projector.state_dict()),
        "preprocess": copy_state(trained.preprocess.state_dict()),
        "cluster_centers": torch.from_numpy(est.cluster_centers_),
        **({} if trained.prototypes is None else {
            "cluster_prototypes": trained.prototypes,
            "cluster_prototype_labels": trained.prototype_owners,
            "cluster_prototype_votes": torch.tensor(trained.prototype_votes)}),
        "embedding_mean": torch.from_numpy(est.embedding_mean_),
        "embedding_scale": torch.from_numpy(est.embedding_scale_),
    }
    if training_state and trained.train_state is not None:
        payload["train_state"] = trained.train_state
    atomic_save(payload, path)


def load_embedder(cls, path):
    """Read a model file: ``(params, trained, n_features_in, feature_names_in)``.

    Body of :meth:`CueCoEmbedder.load`, which builds the estimator from
    ``params`` and publishes ``trained``.
    """
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
    check_version(meta.get("version"), path, "model")
    est, spec = _estimator_from_meta(cls, meta, path)
    try:
        device = resolve_device(est.device)
    except ValueError:
        warnings.warn(f"device={est.device!r} is not available here; loading "
                      "onto the CPU.", UserWarning)
        device = torch.device("cpu")
    # nothing is built for real before the metadata fits the stored tensors
    _check_weight_shapes(est, spec, payload, path)
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
        # files of versions before cluster_graph: the centroids are the prototypes
        prototypes = payload.get("cluster_prototypes")
        owners = payload.get("cluster_prototype_labels")
        # files of versions before the vote: the most similar prototype
        votes = int(payload.get("cluster_prototype_votes", torch.tensor(1)))
        # files of versions before standardised embeddings: the raw features
        mean = payload.get("embedding_mean", torch.zeros(feature_dim)).numpy()
        scale = payload.get("embedding_scale", torch.ones(feature_dim)).numpy()
        history = pd.DataFrame(meta["history"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"{path!s} holds weights that do not fit its parameters: {exc}") from exc
    problems = []
    if feature_dim != meta["feature_dim"]:
        problems.append(f"feature_dim={meta['feature_dim']}, but its backbone gives {feature_dim}")
    if centers.shape != (est.n_clusters, est.projection_dim):
        problems.append(
            f"cluster centers of shape {centers.shape}, but n_clusters={est.n_clusters} "
            f"and projection_dim={est.projection_dim}"
        )
    if (prototypes is None) != (owners is None) or prototypes is not None and not (
            prototypes.ndim == 2 and prototypes.shape[1] == est.projection_dim
            and owners.shape == (prototypes.shape[0],) and not owners.is_floating_point()
            and bool(((owners >= 0) & (owners < est.n_clusters)).all())):
        problems.append("cluster prototypes that do not fit the cluster centers")
    if votes < 1:
        problems.append(f"{votes} prototypes voting on a cluster (at least 1)")
    if mean.shape != (feature_dim,) or scale.shape != (feature_dim,):
        problems.append("embedding statistics of the wrong shape")
    elif not (scale > 0).all():
        problems.append("embedding scales that are not positive")
    expected = () if spec.kind == "image" else (int(spec.shape[0]),)
    if tuple(preprocess.offset.shape) != expected or tuple(preprocess.scale.shape) != expected:
        problems.append("input scaling statistics of the wrong shape")
    tensors = [*encoder.state_dict().values(), *projector.state_dict().values(),
               preprocess.offset, preprocess.scale, payload["cluster_centers"],
               torch.from_numpy(mean), torch.from_numpy(scale),
               *([] if prototypes is None else [prototypes])]
    if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
        problems.append("NaN or infinite weights")
    train_state = payload.get("train_state")
    if train_state is not None:
        try:
            epoch = int(train_state["epoch"])
            train_state["task"]["model"]
        except (KeyError, TypeError, ValueError):
            problems.append("a damaged training state")
        else:
            if epoch != len(history):
                problems.append(
                    f"a training state after epoch {epoch}, but a history of "
                    f"{len(history)} epochs"
                )
    if problems:
        raise ValueError(f"{path!s} cannot be loaded: it holds " + "; ".join(problems) + ".")
    mean, scale = mean.astype(np.float32), scale.astype(np.float32)
    trained = Trained(
        encoder=encoder.to(device).eval(), projector=projector.to(device).eval(),
        preprocess=preprocess.to(device), centroids=torch.from_numpy(centers.copy()),
        embedding_mean=mean, embedding_scale=scale, spec=spec, device=device,
        feature_dim=meta["feature_dim"], channels_last=est.channels_last,
        backbone=est.backbone if isinstance(est.backbone, str) else None,
        history=meta["history"],
        prototypes=prototypes, prototype_owners=owners, prototype_votes=votes,
        resolved=_resolved(meta.get("resolved")),
        # what warm_start and partial_fit continue from (CPU tensors)
        train_state=train_state,
    )
    return est.get_params(deep=False), trained, meta["n_features_in"], meta["feature_names_in"]


def _check_weight_shapes(est, spec, payload, path):
    """Refuse metadata whose networks do not have the stored tensors' shapes.

    The backbone and projector the metadata describes are built on the
    ``meta`` device, which allocates no memory, and loaded with the stored
    tensors (a no-op copy that checks every name and shape, old layouts
    included). Metadata claiming a huge network thus costs nothing.
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            encoder, feature_dim = build_backbone(
                est.backbone, input_kind=spec.kind, input_shape=spec.shape)
            projector = ProjectionHead(feature_dim, est.hidden_dim, est.projection_dim)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path!s} holds metadata that cannot work; refusing to load it: {exc}"
        ) from exc
    described = {
        "encoder": f"backbone={est.backbone!r} on {spec.kind} input of shape "
                   f"{list(spec.shape)}",
        "projector": f"hidden_dim={est.hidden_dim}, projection_dim={est.projection_dim} "
                     f"on {feature_dim} features",
    }
    for name, module in (("encoder", encoder), ("projector", projector)):
        stored = payload.get(name)
        if not isinstance(stored, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in stored.items()):
            raise ValueError(f"{path!s} cannot be loaded: its {name} weights are not a "
                             "mapping of names to tensors.")
        try:
            with warnings.catch_warnings():
                # copying into meta tensors is a no-op that checks the shapes
                warnings.simplefilter("ignore", UserWarning)
                module.load_state_dict(stored)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(
                f"{path!s} holds metadata that does not fit its weights; refusing to "
                f"load it: {_first_misfit(module, stored, name, described[name]) or exc}"
            ) from exc


def _first_misfit(module, stored, name, described):
    """The first tensor of ``module`` (on the meta device) that ``stored`` does not fit."""
    expected = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    for key, shape in expected.items():
        if key in stored and tuple(stored[key].shape) != shape:
            return (f"its metadata ({described}) gives the {name} tensor {key!r} the "
                    f"shape {shape}, the file holds one of shape {tuple(stored[key].shape)}")
    missing = [key for key in expected if key not in stored]
    if missing:
        return (f"its metadata ({described}) calls for the {name} tensor "
                f"{missing[0]!r}, which the file does not hold")
    unexpected = [key for key in stored if key not in expected]
    if unexpected:
        return (f"the file holds the {name} tensor {unexpected[0]!r}, which its "
                f"metadata ({described}) has no place for")
    return None


def _resolved(value):
    """The resolved settings of a model file, those of known names and plain types."""
    known = {"queue_size": int, "cluster_warmup": int, "cluster_ramp": int,
             "batch_size": int, "amp": (str, bool)}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items()
            if k in known and isinstance(v, known[k]) and (k != "amp" or v in ("bf16", "fp16", False))}


def _estimator_from_meta(cls, meta, path):
    """An unfitted ``cls`` and the InputSpec of a model file, checked up front."""
    try:
        params = dict(meta["params"])
        for name in ("image_shape", "image_size"):
            if isinstance(params.get(name), list):
                params[name] = tuple(params[name])
        if params.get("cluster_assign") in ("argmax", "sinkhorn"):
            # written before cluster_assign was deprecated: "argmax" is balance 0
            if params.pop("cluster_assign") == "argmax":
                params["cluster_balance"] = 0.0
        for name, value in LOADED_BEFORE.items():
            # written before the parameter existed: it behaved as this value does
            if name in cls._parameter_constraints:
                params.setdefault(name, value)
        unknown = sorted(set(params) - set(cls._parameter_constraints))
        if unknown:
            raise ValueError(f"unknown parameters {unknown}")
        validate_parameter_constraints(
            {k: v for k, v in cls._parameter_constraints.items() if k in params},
            params, caller_name=cls.__name__,
        )
        est = cls(**params)
        kind, shape, channels_last = meta["input_spec"]
        spec = InputSpec(kind, tuple(shape), channels_last)
        n_features = meta["n_features_in"]
        _check_spec(spec, n_features, meta.get("feature_names_in"))
        if not isinstance(meta["feature_dim"], int) or meta["feature_dim"] < 1:
            raise ValueError(f"feature_dim={meta['feature_dim']!r} is not a positive integer")
    except (InvalidParameterError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path!s} holds metadata that cannot work; refusing to load it: {exc}"
        ) from exc
    return est, spec


def _check_spec(spec, n_features, feature_names):
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ValueError(f"n_features_in={n_features!r} is not a positive integer")
    ndim = {"image": 3, "vector": 1}.get(spec.kind)
    if ndim is None:
        raise ValueError(f"input kind {spec.kind!r} is neither 'image' nor 'vector'")
    if len(spec.shape) != ndim or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in spec.shape):
        raise ValueError(f"the input shape {list(spec.shape)} is not a valid {spec.kind} shape")
    if not isinstance(spec.channels_last, bool):
        raise ValueError(f"channels_last={spec.channels_last!r} is not a bool")
    size = math.prod(spec.shape)  # Python ints: no overflow
    if size != n_features:
        raise ValueError(
            f"the input shape {list(spec.shape)} holds {size} values per sample, "
            f"but n_features_in={n_features}"
        )
    if feature_names is not None and len(feature_names) != n_features:
        raise ValueError(
            f"{len(feature_names)} feature names for n_features_in={n_features}"
        )

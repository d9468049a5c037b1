"""Pickling across devices, the safe model file format, and checkpoint records.

A model fitted on a GPU must unpickle on a CPU-only machine. Plain pickling of
CUDA tensors would fail there, so torch objects are stored as ``torch.save``
blobs and re-mapped onto an available device when loaded.

Every file this library writes (``CueCoEmbedder.save`` and checkpoints) goes
through :func:`atomic_save`: the destination holds either its old content or
the complete new one, never a partial write. Checkpoints carry a run record
(library version, the parameters that define the model, the input
description) that ``fit(resume_from=...)`` checks against the run it is asked
to continue (docs/reliability.rst).
"""

import io
import json
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

from .callbacks import Callback
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
        if "encoder_" in state and "embedding_mean_" not in state:
            # pickled before embeddings were standardised: the raw features
            n = state["_n_features_out"]
            state["embedding_mean_"] = np.zeros(n, dtype=np.float32)
            state["embedding_scale_"] = np.ones(n, dtype=np.float32)
        super().__setstate__(state)


# -- atomic writes ------------------------------------------------------------------
class _WriteRecorder:
    """A binary file wrapper that remembers what a ``write`` raised.

    ``torch.save`` turns anything raised while it writes (a full disk, a
    ``KeyboardInterrupt``) into an uninformative ``RuntimeError`` of its zip
    writer; the recorded exception says what happened.
    """

    def __init__(self, file):
        self._file = file
        self.error = None

    def write(self, data):
        try:
            return self._file.write(data)
        except BaseException as exc:
            self.error = exc
            raise

    def flush(self):
        return self._file.flush()


def atomic_save(obj, path, *, kept=None):
    """``torch.save(obj, path)`` so that ``path`` is never left half-written.

    The data goes to a temporary file in the same folder
    (``.NAME.<random>.tmp``), is flushed and ``fsync``-ed, then renamed over
    ``path`` with :func:`os.replace`, which is atomic: at any moment ``path``
    holds either its previous content or the complete new file. On any error,
    ``KeyboardInterrupt`` included, the temporary file is removed. Only a
    process killed outright (SIGKILL, power cut) can leave a temporary file,
    never a damaged ``path``.

    Parameters
    ----------
    obj : object
        What ``torch.save`` writes.
    path : str or path-like
        Destination file; its folder must exist.
    kept : str, default=None
        A sentence saying what was kept, appended to the error message.

    Raises
    ------
    OSError
        If the file cannot be written (full disk, file size limit, missing
        folder, permissions); the message names ``path`` and the cause, and
        ``path`` is left as it was.
    """
    path = Path(os.fspath(path))
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    recorder = None
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as file:
            recorder = _WriteRecorder(file)
            torch.save(obj, recorder)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # never created, or already renamed
        cause = exc
        if recorder is not None and recorder.error is not None:
            cause = recorder.error
        if not isinstance(cause, Exception):
            raise cause  # KeyboardInterrupt, SystemExit: as they are, unwrapped
        if not isinstance(cause, OSError):
            raise
        reason = cause.strerror or str(cause)
        raise OSError(
            cause.errno,
            f"Could not write {os.path.abspath(path)} ({reason}); {path.name} was "
            "left as it was"
            + (f". {kept}" if kept else "") + ".",
        ) from cause
    _fsync_folder(path.parent)


def _fsync_folder(folder):
    # makes the rename itself durable; not possible on every platform
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- checkpoint run records ----------------------------------------------------------
# the estimator parameters that do not define a run: a checkpoint is resumed
# only by a run whose other parameters are equal. max_epochs may grow; the
# input shape is checked on the data itself; the random streams are restored
# from the checkpoint; the rest says where and how fast the run computes
NOT_RUN_PARAMS = frozenset({
    "max_epochs", "image_shape", "image_size", "random_state", "warm_start",
    "device", "amp", "num_workers", "channels_last", "compile", "distributed_bn",
    "callbacks", "verbose", "refine_centroids",
})


def run_params(params):
    """The parameters of ``params`` that define a training run, as plain data."""
    return {name: _plain(value) for name, value in sorted(params.items())
            if name not in NOT_RUN_PARAMS}


def _plain(value):
    """``value`` as plain data for a record (modules and callables by name)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.nn.Module):
        return f"<module {type(value).__qualname__}>"
    return f"<{getattr(value, '__qualname__', type(value).__qualname__)}>"


def run_record(params, spec, preprocess):
    """Plain data that identifies what a checkpoint's run trains.

    Parameters
    ----------
    params : dict
        The estimator's ``get_params(deep=False)``.
    spec : InputSpec
        The input description.
    preprocess : Preprocess
        The input conversion (its offset and scale: the value range).

    Returns
    -------
    record : dict
        ``version``, ``params`` (see :func:`run_params`) and ``input``
        (``kind``, ``shape``, ``offset``, ``scale``).
    """
    return {
        "version": __version__,
        "params": run_params(params),
        "input": {
            "kind": spec.kind,
            "shape": [int(s) for s in spec.shape],
            "offset": preprocess.offset.detach().cpu().clone(),
            "scale": preprocess.scale.detach().cpu().clone(),
        },
    }


class RunRecord(Callback):
    """Gives the trainer its :func:`run_record`, stored in every checkpoint.

    Must come before :class:`~skcueco.callbacks.Checkpoint` in the list.

    Parameters
    ----------
    params : dict
        The estimator's ``get_params(deep=False)``.
    spec : InputSpec
        The input description of the training data.
    """

    def __init__(self, params, spec):
        self.params = params
        self.spec = spec

    def on_train_begin(self, trainer):
        trainer.run_info = run_record(self.params, self.spec, trainer.task.preprocess)


def _version_tuple(version):
    parts = []
    for part in str(version).split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def _check_version(version, path, what):
    if _version_tuple(version) > _version_tuple(__version__):
        raise ValueError(
            f"{path!s} was written by skcueco {version}, newer than this version "
            f"({__version__}); refusing to read the {what}: upgrade skcueco."
        )
    if _version_tuple(version)[:2] != _version_tuple(__version__)[:2]:
        raise ValueError(
            f"{path!s} was written by skcueco {version}, which is not compatible "
            f"with this version ({__version__}); refusing to read the {what}."
        )


def read_checkpoint(path):
    """The training state stored in a checkpoint file, checked for form and version.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    state : dict
        A :meth:`Trainer.state_dict <skcueco.training.engine.Trainer.state_dict>`
        with its ``"run"`` record.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a skcueco checkpoint, holds no run record, or was
        written by an incompatible (e.g. newer) version.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path!s} is not a readable skcueco checkpoint: {exc}") from exc
    if not isinstance(state, dict) or not {"epoch", "optimizer", "task"} <= set(state):
        raise ValueError(
            f"{path!s} is not a skcueco checkpoint (a training state written by "
            "skcueco.callbacks.Checkpoint); a model written by save() is read "
            "with CueCoEmbedder.load."
        )
    run = state.get("run")
    if not isinstance(run, dict) or not {"version", "params", "input"} <= set(run):
        raise ValueError(
            f"{path!s} holds no run record (version, parameters and input of its "
            "run), so it cannot be checked against this run; it was not written "
            "by this version of skcueco's Checkpoint."
        )
    _check_version(run["version"], path, "checkpoint")
    return state


def check_checkpoint_fits(state, path, params, spec, offset, scale):
    """Refuse a checkpoint whose run differs from the one asked to resume it.

    Parameters
    ----------
    state : dict
        From :func:`read_checkpoint`.
    path : str or path-like
        The checkpoint's file, for messages.
    params : dict
        The estimator's ``get_params(deep=False)``.
    spec : InputSpec
        The input description of the data to resume on.
    offset, scale : float or ndarray
        Input statistics of that data (:func:`~skcueco.data.preprocess.input_statistics`).

    Raises
    ------
    ValueError
        Naming each difference: a parameter of :func:`run_params`, the kind
        or shape of the input, or its value range.
    """
    run = state["run"]
    problems = []
    saved_params = run["params"]
    for name, here in run_params(params).items():
        # a parameter the writing version did not have is not compared
        if name in saved_params and saved_params[name] != here:
            problems.append(f"{name}={saved_params[name]!r} in the checkpoint, {here!r} here")
    saved = run["input"]
    if saved["kind"] != spec.kind or list(saved["shape"]) != [int(s) for s in spec.shape]:
        problems.append(
            f"the checkpoint was trained on {_describe(saved['kind'], saved['shape'])}, "
            f"X holds {_describe(spec.kind, spec.shape)}"
        )
    else:
        saved_offset = np.asarray(saved["offset"], dtype=np.float64)
        saved_scale = np.asarray(saved["scale"], dtype=np.float64)
        offset = np.asarray(offset, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        if (saved_offset.shape != offset.shape or saved_scale.shape != scale.shape
                or not np.allclose(saved_offset, offset, rtol=1e-5, atol=1e-7)
                or not np.allclose(saved_scale, scale, rtol=1e-5, atol=0)):
            problems.append(
                "the value range (input scaling) of X differs from the checkpoint's: "
                + _describe_scaling(saved["kind"], saved_offset, saved_scale, offset, scale)
            )
    if problems:
        raise ValueError(
            f"The checkpoint {path!s} does not match this run: "
            + "; ".join(problems)
            + ". Resume with the parameters and data of the run that wrote it."
        )


def _describe(kind, shape):
    if kind == "image":
        return f"images of shape (C, H, W) = {tuple(int(s) for s in shape)}"
    return f"vectors of {int(shape[0])} features"


def _describe_scaling(kind, saved_offset, saved_scale, offset, scale):
    if kind == "image":
        def span(o, s):
            return f"[{float(o):.4g}, {float(o + 1 / s):.4g}]"
        return f"scaled from {span(saved_offset, saved_scale)} there, {span(offset, scale)} here"
    return "other per-feature means or standard deviations (other data?)"


def checkpoint_owner(path):
    """Epoch and run id of a checkpoint file, read without loading its tensors.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    epoch : int or None
        Number of finished epochs the checkpoint holds.
    run_id : str or None
        Id of the run that wrote it. Both are None for a file that is not a
        checkpoint with a run record (unreadable, another format, older).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"]), str(state["run"]["id"])
    except Exception:
        return None, None


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
        "embedding_mean": torch.from_numpy(est.embedding_mean_),
        "embedding_scale": torch.from_numpy(est.embedding_scale_),
    }
    if training_state and getattr(est, "_train_state", None) is not None:
        payload["train_state"] = est._train_state
    atomic_save(payload, path)


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
    _check_version(meta.get("version"), path, "model")
    est, spec = _estimator_from_meta(cls, meta, path)
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
    if mean.shape != (feature_dim,) or scale.shape != (feature_dim,):
        problems.append("embedding statistics of the wrong shape")
    elif not (scale > 0).all():
        problems.append("embedding scales that are not positive")
    expected = () if spec.kind == "image" else (int(spec.shape[0]),)
    if tuple(preprocess.offset.shape) != expected or tuple(preprocess.scale.shape) != expected:
        problems.append("input scaling statistics of the wrong shape")
    tensors = [*encoder.state_dict().values(), *projector.state_dict().values(),
               preprocess.offset, preprocess.scale, payload["cluster_centers"],
               torch.from_numpy(mean), torch.from_numpy(scale)]
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
    est.encoder_ = encoder.to(device).eval()
    est._projector = projector.to(device).eval()
    est._preprocess = preprocess.to(device)
    est.cluster_centers_ = centers.copy()
    est.embedding_mean_ = mean.astype(np.float32)
    est.embedding_scale_ = scale.astype(np.float32)
    est.history_ = history
    est.n_iter_ = len(est.history_)
    est.n_features_in_ = meta["n_features_in"]
    if meta["feature_names_in"] is not None:
        est.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
    est.image_shape_ = tuple(spec.shape) if spec.kind == "image" else None
    est._input_spec = spec
    est.device_ = device
    est._n_features_out = meta["feature_dim"]
    if train_state is not None:
        # what warm_start and partial_fit continue from (CPU tensors)
        est._train_state = train_state
    return est


def _estimator_from_meta(cls, meta, path):
    """An unfitted ``cls`` and the InputSpec of a model file, checked up front."""
    try:
        params = dict(meta["params"])
        for name in ("image_shape", "image_size"):
            if isinstance(params.get(name), list):
                params[name] = tuple(params[name])
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
    size = int(np.prod(spec.shape))
    if size != n_features:
        raise ValueError(
            f"the input shape {list(spec.shape)} holds {size} values per sample, "
            f"but n_features_in={n_features}"
        )
    if feature_names is not None and len(feature_names) != n_features:
        raise ValueError(
            f"{len(feature_names)} feature names for n_features_in={n_features}"
        )

"""Checkpoints: atomic writes, the run record, reading and checking a checkpoint.

Every file this library writes (``CueCoEmbedder.save`` and checkpoints) goes
through :func:`atomic_save`: the destination holds either its old content or
the complete new one, never a partial write. A checkpoint carries a run record
(library version, the parameters that define the model, the input
description) that ``fit(resume_from=...)`` checks against the run it is asked
to continue, and the id of the run that wrote it, by which a folder belongs to
one run (docs/reliability.rst); while a run writes in a folder it holds the
folder's lock (:mod:`skcueco.training.folder_lock`). This module is the one
that knows the layout of a checkpoint.
"""

import hashlib
import os
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from .folder_lock import FolderLock
from .hooks import Callback


# -- atomic writes ------------------------------------------------------------------
_SAFE_TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")


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

    def __getattr__(self, name):
        # anything else a writer asks of a file (tell, seek, name...)
        return getattr(self._file, name)


def atomic_save(obj, path, *, kept=None, tag=None):
    """``torch.save(obj, path)`` so that ``path`` is never left half-written.

    The data goes to a temporary file in the same folder
    (``.NAME.<random>.tmp``, or ``.NAME.<tag>.<random>.tmp``), is flushed and
    ``fsync``-ed, then renamed over
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
    tag : str, default=None
        Letters, digits, ``-`` or ``_`` (at most 64) put in the temporary
        file's name, by which the writer recognises a temporary file left by
        one of its own writes that was killed (:class:`Checkpoint` uses its
        run's id).

    Raises
    ------
    ValueError
        If ``tag`` holds other characters.
    OSError
        If the file cannot be written (full disk, file size limit, missing
        folder, permissions); the message names ``path`` and the cause, and
        ``path`` is left as it was.
    """
    atomic_write(path, lambda file: torch.save(obj, file), kept=kept, tag=tag)


def atomic_write(path, write, *, kept=None, tag=None):
    """Write a file through ``write(file)`` so that ``path`` is never left half-written.

    What :func:`atomic_save` does for ``torch.save``, for any writer (bytes,
    ``joblib.dump``): the same temporary file, ``fsync``, rename and errors.

    Parameters
    ----------
    path : str or path-like
        Destination file; its folder must exist.
    write : callable
        ``write(file)`` writes the content to a binary file object.
    kept : str, default=None
        A sentence saying what was kept, appended to the error message.
    tag : str, default=None
        As for :func:`atomic_save`.

    Raises
    ------
    ValueError
        If ``tag`` holds other characters.
    OSError
        If the file cannot be written; ``path`` is left as it was.
    """
    path = Path(os.fspath(path))
    if tag is not None and not _SAFE_TAG.fullmatch(str(tag)):
        raise ValueError(f"tag={tag!r} must be 1 to 64 letters, digits, '-' or '_'.")
    middle = f"{tag}.{uuid.uuid4().hex[:12]}" if tag else uuid.uuid4().hex[:12]
    tmp = path.parent / f".{path.name}.{middle}.tmp"
    recorder = None
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as file:
            recorder = _WriteRecorder(file)
            write(recorder)
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


# -- the layout of a training state ------------------------------------------------
# (written by Trainer.state_dict; read here and nowhere else)
def epoch(state):
    """Number of finished epochs a training state holds."""
    return int(state["epoch"])


def global_step(state):
    """Number of optimiser steps a training state holds."""
    return int(state["global_step"])


def model_state(state):
    """The model's ``state_dict`` inside a training state."""
    return state["task"]["model"]


def queue_size(state):
    """Length of the key queue of a training state."""
    return model_state(state)["queue.keys"].shape[0]


def embedding_stats(state):
    """Feature statistics kept with a fitted model's training state, or None."""
    return state.get("embedding_stats")


# -- checkpoint run records ----------------------------------------------------------
def run_record(settings, spec, preprocess):
    """Plain data that identifies what a checkpoint's run trains.

    Parameters
    ----------
    settings : dict
        The settings that define the run
        (:meth:`~skcueco.training.specs.RunSpec.record`).
    spec : InputSpec
        The input description.
    preprocess : Preprocess
        The input conversion (its offset and scale: the value range).

    Returns
    -------
    record : dict
        ``version``, ``params`` (``settings``) and ``input``
        (``kind``, ``shape``, ``offset``, ``scale``).
    """
    return {
        "version": __version__,
        "params": dict(settings),
        "input": {
            "kind": spec.kind,
            "shape": [int(s) for s in spec.shape],
            "offset": preprocess.offset.detach().cpu().clone(),
            "scale": preprocess.scale.detach().cpu().clone(),
        },
    }


def amp_name(dtype):
    """``"bf16"``, ``"fp16"`` or False: the autocast a run trains with."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, False)


class RunRecord(Callback):
    """Gives the trainer its :func:`run_record`, stored in every checkpoint.

    Must come before :class:`~skcueco.callbacks.Checkpoint` in the list.

    Parameters
    ----------
    settings : dict
        The settings that define the run
        (:meth:`~skcueco.training.specs.RunSpec.record`).
    spec : InputSpec
        The input description of the training data.
    """

    def __init__(self, settings, spec):
        self.settings = settings
        self.spec = spec

    def on_train_begin(self, trainer):
        trainer.run_info = run_record(self.settings, self.spec, trainer.task.preprocess)
        # how the run computes: recorded, never compared
        trainer.run_info["amp"] = amp_name(trainer.amp_dtype)


def _version_tuple(version):
    parts = []
    for part in str(version).split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def check_version(version, path, what):
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
    check_version(run["version"], path, "checkpoint")
    return state


TRAINED_BEFORE = {"cluster_targets": "centroids", "cluster_negatives": "keep",
                  "cluster_positives": "view"}
"""Settings that checkpoints of versions without them trained with: they are
compared as if recorded (the default ``cluster_targets`` trains otherwise,
and ``cluster_negatives="drop"`` would)."""

LOADED_BEFORE = {**TRAINED_BEFORE, "embedding_space": "features"}
"""Settings that model files and pickles of versions without them behaved
as: they load with these values (they trained with centroid targets, and
``transform`` returned the standardised features)."""


def check_checkpoint_fits(state, path, settings, spec, offset, scale):
    """Refuse a checkpoint whose run differs from the one asked to resume it.

    Parameters
    ----------
    state : dict
        From :func:`read_checkpoint`.
    path : str or path-like
        The checkpoint's file, for messages.
    settings : dict
        The settings that define the run asked to resume it
        (:meth:`~skcueco.training.specs.RunSpec.record`).
    spec : InputSpec
        The input description of the data to resume on.
    offset, scale : float or ndarray
        Input statistics of that data (:func:`~skcueco.data.preprocess.input_statistics`).

    Raises
    ------
    ValueError
        Naming each difference: a setting, the kind
        or shape of the input, or its value range.
    """
    run = state["run"]
    problems = []
    saved_params = dict(run["params"])
    if saved_params.get("cluster_assign") == "argmax":
        # written before cluster_assign was deprecated: "argmax" is balance 0
        saved_params["cluster_balance"] = 0.0
    for name, value in TRAINED_BEFORE.items():
        # written before the parameter existed: it trained as this value does
        saved_params.setdefault(name, value)
    for name, here in settings.items():
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


# -- temporary files of checkpoint writes -----------------------------------------
def _run_tag(run_id):
    """The tag of a run's temporary checkpoint files: its id, or a digest of it."""
    run_id = str(run_id)
    if _SAFE_TAG.fullmatch(run_id):
        return run_id
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


# ``.epoch-0003.pt.<tag>.<random>.tmp``; no tag: an untagged write
_TEMP_FILE = re.compile(r"\.(epoch-\d+\.pt)\.(?:([A-Za-z0-9_-]{1,64})\.)?[0-9a-f]{12}\.tmp")


class Checkpoint(Callback):
    """Save the full training state every few epochs, keeping the last few.

    Files are named ``epoch-0005.pt`` in ``dirname``; pass one to
    ``CueCoEmbedder.fit(X, resume_from=...)`` to continue training exactly
    where it stopped (:meth:`latest` finds the newest). They hold only
    tensors and plain values and are read with
    ``torch.load(weights_only=True)``.

    A folder belongs to one training run. Every file records its run's id,
    with the library version, the parameters that define the model and a
    description of the input, which ``resume_from`` checks. When training
    starts, the ``epoch-*.pt`` files already in the folder must belong to
    this same run (one resumed with ``resume_from``, or continued by
    ``warm_start`` or ``partial_fit``): they are then rotated like the new
    ones. If any belongs to another run, or is not a checkpoint, training is
    refused with a ValueError before it starts, and nothing in the folder
    is overwritten or deleted. Other files in the folder are never touched.

    While it trains, the run holds the folder's lock file
    (``.skcueco-checkpoint.lock``: run id, process id, host, start time),
    created atomically when training starts and removed when it ends, on an
    error or an interrupt too. A second run started on the folder meanwhile,
    even at the same moment, is refused with a ValueError naming the folder
    and the run that holds it. The lock of a process that no longer runs
    (killed, or the machine restarted) is taken over with a warning; a
    lock of another machine is never taken over. Before each write the run
    checks that the lock is still its own.

    Writes are atomic (a temporary file, flushed to disk, then renamed): a
    checkpoint is complete or absent, never damaged. ``KeyboardInterrupt``
    during a write keeps the finished epoch in the model and removes the
    temporary file. A write that fails (a full disk) raises an ``OSError``
    naming the file and the checkpoints that remain. A process killed while
    it writes leaves a temporary file named after its run
    (``.epoch-0003.pt.<run id>.<random>.tmp``); the run removes its own
    when it resumes, and a warning names those of other runs, which are
    left alone.

    Parameters
    ----------
    dirname : str or path-like
        Directory, created if needed.
    every : int, default=1
        Save after every ``every``-th epoch (and after the last one).
    keep_last : int, default=2
        Number of this run's checkpoint files to keep; older ones are deleted.

    Attributes
    ----------
    saved_ : list of pathlib.Path
        This run's checkpoints on disk, oldest first.
    """

    def __init__(self, dirname, every=1, keep_last=2):
        if every < 1 or keep_last < 1:
            raise ValueError("every and keep_last must be >= 1.")
        self.dirname = dirname
        self.every = every
        self.keep_last = keep_last

    @staticmethod
    def latest(dirname):
        """The newest checkpoint of the run that owns ``dirname``.

        Parameters
        ----------
        dirname : str or path-like
            A folder written by a Checkpoint.

        Returns
        -------
        path : pathlib.Path or None
            The file of the highest epoch; None if the folder does not exist
            or holds no ``epoch-*.pt`` file.

        Raises
        ------
        ValueError
            If the folder holds checkpoints of several runs, or
            ``epoch-*.pt`` files that are not checkpoints: which one to
            resume would be a guess.
        """
        found, strangers = _checkpoints_in(Path(dirname))
        runs = sorted({run_id for _, _, run_id in found})
        if strangers or len(runs) > 1:
            raise ValueError(
                f"{dirname!s} holds " + (
                    f"files that are not skcueco checkpoints ({_names(strangers)})"
                    if strangers else
                    f"checkpoints of {len(runs)} different training runs "
                    f"({_names(path for _, path, _ in found)})"
                ) + "; a checkpoint folder belongs to one run, so the one to resume "
                "is ambiguous. Move the other files away, or pass the file to "
                "resume explicitly."
            )
        return max(found)[1] if found else None

    def on_train_begin(self, trainer):
        self._dir = Path(self.dirname)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._failed = False
        self._lock = None
        if trainer.is_main_process:
            self._lock = FolderLock(self._dir, trainer.run_id)
            self._lock.acquire()
        try:
            self._check_folder(trainer)
        except BaseException:
            self._release()  # on_train_end is not called when this fails
            raise

    def _check_folder(self, trainer):
        found, strangers = _checkpoints_in(self._dir)
        others = [path for _, path, run_id in found if run_id != trainer.run_id]
        if others or strangers:
            what = []
            if others:
                what.append(f"checkpoints of another training run ({_names(others)})")
            if strangers:
                what.append(f"epoch-*.pt files that are not skcueco checkpoints "
                            f"({_names(strangers)})")
            raise ValueError(
                f"The checkpoint folder {self._dir} holds " + " and ".join(what)
                + "; a checkpoint folder belongs to one run, and Checkpoint never "
                "overwrites or deletes files it did not write. Use an empty folder, "
                "move those files away, or continue that run with "
                "fit(X, resume_from=...)."
            )
        self.saved_ = [path for _, path, _ in sorted(found)]
        if self._lock is not None:
            self._remove_stale_temp_files(trainer.run_id)

    def _remove_stale_temp_files(self, run_id):
        # this run holds the lock: no live process writes its temporary files
        mine, tag, others = [], _run_tag(run_id), []
        for path in sorted(self._dir.iterdir()):
            match = _TEMP_FILE.fullmatch(path.name)
            if match is None:
                continue
            (mine if match.group(2) == tag else others).append(path)
        for path in mine:
            path.unlink(missing_ok=True)
        if others:
            warnings.warn(
                f"The checkpoint folder {self._dir} holds temporary files of "
                f"checkpoint writes of other runs that did not finish "
                f"({_names(others)}); they were left as they are. Delete them if "
                "no other process writes in this folder.",
                RuntimeWarning, stacklevel=3,
            )

    def on_epoch_end(self, trainer, epoch, logs):
        last = trainer.epoch >= trainer.max_epochs or trainer.stop_training
        if (epoch + 1) % self.every == 0 or last:
            self._save(trainer, epoch)

    def on_train_end(self, trainer):
        # a stop requested after this callback ran (e.g. by EarlyStopping later
        # in the list) still gets its final checkpoint; not after an interrupt,
        # an error or a failed write
        done = trainer.epoch
        try:
            if (done and not trainer.interrupted and not getattr(trainer, "failed", False)
                    and not self._failed and self._path(done - 1) not in self.saved_):
                self._save(trainer, done - 1)
        finally:
            self._release()

    def _release(self):
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def _path(self, epoch):
        return self._dir / f"epoch-{epoch + 1:04d}.pt"

    def _save(self, trainer, epoch):
        if not trainer.is_main_process:
            return
        path = self._path(epoch)
        kept = [p.name for p in self.saved_ if p != path]
        if self._lock is not None:
            try:
                self._lock.check()
            except ValueError:
                self._failed = True
                self._release()  # leaves the file: it is another run's now
                raise
        try:
            atomic_save(trainer.state_dict(), path, tag=_run_tag(trainer.run_id), kept=(
                f"Training stopped after epoch {trainer.epoch}, which is not saved; "
                + (f"this run's checkpoints in {self._dir} are intact (newest: "
                   f"{kept[-1]}): resume from it with fit(X, resume_from=...) once "
                   "there is room" if kept else
                   f"no checkpoint of this run is in {self._dir}")
            ))
        except OSError:
            self._failed = True
            raise
        if path in self.saved_:
            self.saved_.remove(path)
        self.saved_.append(path)
        while len(self.saved_) > self.keep_last:
            self.saved_.pop(0).unlink(missing_ok=True)


def _checkpoints_in(folder):
    """``([(epoch, path, run_id), ...], [paths that are not checkpoints])`` in ``folder``."""
    found, strangers = [], []
    if not folder.is_dir():
        return found, strangers
    for path in sorted(folder.glob("epoch-*.pt")):
        epoch, run_id = checkpoint_owner(path)
        if run_id is None:
            strangers.append(path)
        else:
            found.append((epoch, path, run_id))
    return found, strangers


def _names(paths, limit=3):
    names = [p.name for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more

"""The TensorBoard callback: training curves, cluster sizes and the embedding projector.

Public as :class:`skcueco.callbacks.TensorBoard`. The ``tensorboard`` package
is imported only when training starts.
"""

import math
import os
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from .training.distributed import get_world_size
from .training.checkpoint import atomic_write
from .training.hooks import Callback
from .training.trained import feature_scale

UPDATE_FREQS = ("epoch", "step")
# in per-step mode, step values wait on their device and are read (one host
# sync) at the end of each epoch, and at most this often within an epoch
_READ_EVERY_SECONDS = 10.0
# the projector shows thumbnails of at most this many pixels a side, and
# refuses sprites wider than 8192 pixels
_MAX_THUMBNAIL_SIDE = 64
_MAX_SPRITE_SIDE = 8192
_INSTALL_HINT = 'pip install "skcueco[tensorboard]"'


def _summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError that says what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "The TensorBoard callback needs the tensorboard package, which is not "
            f"installed: {_INSTALL_HINT} (or pip install tensorboard)."
        ) from exc
    return SummaryWriter


class TensorBoard(Callback):
    """Write the training curves to TensorBoard, and the embeddings to its projector.

    Every column of ``history_`` (``loss``, ``contrastive``, ``clustering``,
    ``lr``, ``cluster_weight``, and ``knn_accuracy`` with a
    :class:`~skcueco.callbacks.KNNMonitor`) becomes a scalar ``train/<column>``;
    ``train/images_per_second`` is the throughput over all processes. Once
    the centroids exist, the keys in the queue (the most recent training
    images) are assigned to their nearest centroid at the end of every
    epoch: the histogram ``clusters/assignments`` counts the keys of each
    cluster, ``clusters/largest_fraction`` is the share of the largest one
    and ``clusters/empty`` the number of clusters without a key. At the end
    of training, with ``embedding_data``, the backbone features of up to
    ``max_embedding_images`` of its images go to the embedding projector,
    with the images as thumbnails.

    Watch a run with ``tensorboard --logdir LOG_DIR``.

    Parameters
    ----------
    log_dir : str or path-like
        Folder of the event files (created if needed). Several fits may
        share it: a continued run (``warm_start``, ``partial_fit``) numbers
        its epochs and steps after the earlier ones.
    update_freq : {"epoch", "step"}, default="epoch"
        ``"epoch"``: one value per epoch, the epoch's mean for the loss
        terms, plotted against the epoch (from 1). ``"step"``: the loss
        terms, learning rate and images per second of every optimiser step,
        plotted against the step (from 1); the per-epoch values (clustering
        weight, cluster sizes, kNN accuracy) are plotted at the epoch's last
        step.
    embedding_data : array-like of images, default=None
        Images to show in the embedding projector at the end of training,
        in any layout ``fit`` accepts (the same as the training data's).
        None: no projector.
    embedding_labels : array-like of shape (n_samples,), default=None
        Labels of ``embedding_data``, shown and used for colouring in the
        projector.
    max_embedding_images : int, default=2000
        At most this many images of ``embedding_data`` are embedded: a
        random subset (always the same one) when it holds more.

    Attributes
    ----------
    log_dir_ : pathlib.Path
        The folder written to (set at the start of training).

    See Also
    --------
    ProgressBar : Progress in the terminal (``verbose``).
    KNNMonitor : Adds ``knn_accuracy`` to the history, and here a curve.

    Notes
    -----
    Only the main process writes. Reading a loss from a GPU waits for the
    GPU, so in per-step mode the step losses stay on their device and are
    read together, at the end of each epoch and at most every 10 seconds
    within one. In distributed training the step values are those of the
    main process, the per-epoch values those of ``history_`` (means over all
    processes).

    The projector's features are the backbone's, standardised over the
    embedded images (as :class:`~skcueco.callbacks.KNNMonitor` does). Its
    files (``projector_config.pbtxt`` and, in a folder named after the
    epoch, ``tensors.tsv``, ``metadata.tsv`` and ``sprite.png``) are each
    written atomically; thumbnails are scaled to [0, 1] (uint8 images by
    255, others by their minimum and maximum) and shrunk to at most 64
    pixels a side. A run that fails or is interrupted writes no projector.
    Needs the ``tensorboard`` package: ``pip install "skcueco[tensorboard]"``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.callbacks import TensorBoard
    >>> X, y = load_digits(return_X_y=True)
    >>> board = TensorBoard("runs/digits", embedding_data=X, embedding_labels=y)
    >>> CueCoEmbedder(callbacks=[board]).fit(X)  # doctest: +SKIP

    Then ``tensorboard --logdir runs`` shows the curves and, under
    *Projector*, the digits placed by their embeddings.
    """

    def __init__(self, log_dir, update_freq="epoch", embedding_data=None,
                 embedding_labels=None, max_embedding_images=2000):
        if update_freq not in UPDATE_FREQS:
            raise ValueError(
                f"update_freq must be 'epoch' or 'step', got {update_freq!r}."
            )
        if (isinstance(max_embedding_images, bool)
                or not isinstance(max_embedding_images, (int, np.integer))
                or max_embedding_images < 1):
            raise ValueError(
                f"max_embedding_images must be an integer >= 1, got {max_embedding_images!r}."
            )
        if embedding_labels is not None:
            if embedding_data is None:
                raise ValueError("embedding_labels is given without embedding_data.")
            if len(embedding_labels) != len(embedding_data):
                raise ValueError(
                    f"embedding_labels has {len(embedding_labels)} labels for "
                    f"{len(embedding_data)} images in embedding_data."
                )
        self.log_dir = log_dir
        self.update_freq = update_freq
        self.embedding_data = embedding_data
        self.embedding_labels = embedding_labels
        self.max_embedding_images = max_embedding_images

    # -- hooks ------------------------------------------------------------------
    def on_train_begin(self, trainer):
        """Open the event file (on the main process only).

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.

        Raises
        ------
        ImportError
            If the ``tensorboard`` package is missing (on every process).
        """
        writer_class = _summary_writer_class()  # every process: all fail alike
        if self.embedding_data is not None and getattr(trainer, "embed", None) is None:
            raise ValueError(
                "TensorBoard(embedding_data=...) needs a trainer that can embed "
                "images (as CueCoEmbedder.fit's does)."
            )
        self._writer = None
        if not trainer.is_main_process:
            return
        self.log_dir_ = Path(os.fspath(self.log_dir))
        self.log_dir_.mkdir(parents=True, exist_ok=True)
        self._writer = writer_class(log_dir=str(self.log_dir_))
        batch_size = getattr(trainer, "batch_size", None)
        self._images_per_step = batch_size * get_world_size() if batch_size else None
        self._record = None  # the last epoch's record, for entries added after it
        self._steps = []  # per step: (step, stacked loss terms, lr, seconds)
        self._step_keys = None

    def on_epoch_begin(self, trainer, epoch):
        """Write what later callbacks added to the last epoch's record.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        epoch : int
            Index of the epoch (0-based).
        """
        if self._writer is None:
            return
        self._write_late_entries()
        self._n_steps = 0
        self._last_time = self._last_read = time.perf_counter()

    def on_batch_end(self, trainer, step, logs):
        """Keep the step's values on their device (``update_freq="step"``).

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        step : int
            Number of optimiser steps done so far.
        logs : dict of str to torch.Tensor
            The step's 0-d loss tensors, on the training device.
        """
        if self._writer is None:
            return
        self._n_steps += 1
        if self.update_freq != "step":
            return
        now = time.perf_counter()
        if self._step_keys is None:
            self._step_keys = list(logs)
        values = torch.stack([logs[k].detach().float() for k in self._step_keys])
        lr = trainer.optimizer.param_groups[0]["lr"] if trainer.optimizer else None
        self._steps.append((step, values, lr, now - self._last_time))
        self._last_time = now
        if now - self._last_read >= _READ_EVERY_SECONDS:
            self._write_steps()

    def on_epoch_end(self, trainer, epoch, logs):
        """Write the epoch's values and cluster sizes.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        epoch : int
            Index of the epoch (0-based).
        logs : dict of str to float
            The epoch's history record.
        """
        if self._writer is None:
            return
        per_step = self.update_freq == "step"
        if per_step:
            self._write_steps()
            x = trainer.global_step
            skip = {"epoch", "seconds", "lr", *(self._step_keys or ())}
        else:
            x = int(logs["epoch"])
            skip = {"epoch", "seconds"}
            seconds = logs.get("seconds", 0.0)
            if seconds > 0:
                self._write_rate(self._n_steps / seconds, x)
        self._write_record(logs, x, skip)
        self._write_cluster_sizes(trainer, x)
        self._writer.flush()

    def on_train_end(self, trainer):
        """Write the projector and close the event file (also after an error).

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        """
        if getattr(self, "_writer", None) is None:
            return
        try:
            if getattr(trainer, "failed", False) or getattr(trainer, "interrupted", False):
                return
            self._write_late_entries()
            if self.embedding_data is not None:
                self._write_projector(trainer)
        finally:
            self._steps = []
            self._writer.close()
            self._writer = None

    # -- scalars ----------------------------------------------------------------
    def _write_rate(self, steps_per_second, x):
        if self._images_per_step:
            self._writer.add_scalar("train/images_per_second",
                                    steps_per_second * self._images_per_step, x)
        else:
            self._writer.add_scalar("train/steps_per_second", steps_per_second, x)

    def _write_record(self, record, x, skip):
        written = set(skip)
        for key, value in record.items():
            if key not in written and _is_number(value):
                self._writer.add_scalar(f"train/{key}", float(value), x)
            written.add(key)
        self._record = (record, written, x)

    def _write_late_entries(self):
        """Entries that callbacks after this one (e.g. a KNNMonitor) added to the record."""
        if self._record is None:
            return
        record, written, x = self._record
        if set(record) - written:
            self._write_record(record, x, written)
            self._writer.flush()

    def _write_steps(self):
        """Read the kept step values from their device (one sync) and write them."""
        self._last_read = time.perf_counter()
        if not self._steps:
            return
        values = torch.stack([v for _, v, _, _ in self._steps]).cpu().tolist()
        for (step, _, lr, seconds), row in zip(self._steps, values):
            for key, value in zip(self._step_keys, row):
                self._writer.add_scalar(f"train/{key}", value, step)
            if lr is not None:
                self._writer.add_scalar("train/lr", lr, step)
            if seconds > 0:
                self._write_rate(1.0 / seconds, step)
        self._steps = []

    def _write_cluster_sizes(self, trainer, x):
        model = getattr(getattr(trainer, "task", None), "model", None)
        queue = getattr(model, "queue", None)
        if model is None or queue is None or not bool(model.centroids_ready):
            return
        keys = queue.keys
        if keys.shape[0] == 0:
            return
        from .nn.losses import assign_clusters

        n_clusters = model.centroids.shape[0]
        with torch.no_grad():
            labels = assign_clusters(keys.to(model.centroids.device), model.centroids)
            counts = torch.bincount(labels, minlength=n_clusters).cpu().numpy()
        # a histogram over the cluster index: the height of bin k is the size of cluster k
        self._writer.add_histogram_raw(
            "clusters/assignments", min=0, max=n_clusters - 1, num=int(counts.sum()),
            sum=float(np.arange(n_clusters) @ counts),
            sum_squares=float((np.arange(n_clusters) ** 2) @ counts),
            bucket_limits=np.arange(n_clusters, dtype=float) + 0.5,
            bucket_counts=counts.astype(float), global_step=x,
        )
        self._writer.add_scalar("clusters/largest_fraction", counts.max() / counts.sum(), x)
        self._writer.add_scalar("clusters/empty", int((counts == 0).sum()), x)

    # -- projector --------------------------------------------------------------
    def _write_projector(self, trainer):
        images, labels = _embedding_subset(self.embedding_data, self.embedding_labels,
                                           self.max_embedding_images, trainer.run_info)
        features = np.asarray(trainer.embed(images), dtype=np.float32)
        features = (features - features.mean(axis=0)) / feature_scale(features.std(axis=0))
        thumbnails = _thumbnails(images, trainer.run_info)
        write_projector(self.log_dir_, f"{trainer.epoch:05d}/embedding",
                        f"embedding:{trainer.epoch:05d}", features, labels, thumbnails)


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# -- the embedding's images ---------------------------------------------------------
def _image_layout(run_info):
    """``(C, H, W)`` of the training images from the trainer's run record, or None."""
    record = (run_info or {}).get("input") or {}
    if record.get("kind") != "image":
        return None
    return tuple(int(s) for s in record["shape"])


def _embedding_subset(data, labels, limit, run_info):
    """Up to ``limit`` rows of ``data`` (decoded if they are image files), and their labels."""
    from .data.sources import as_image_source

    layout = _image_layout(run_info)
    if not isinstance(data, np.ndarray):
        size = layout[1:] if layout else None
        mode = ("L" if layout[0] == 1 else "RGB") if layout else "auto"
        source = as_image_source(data, image_size=size, mode=mode)
        data = np.asarray(data) if source is None else source
    n = len(data)
    rows = np.arange(n)
    if n > limit:  # a fixed draw: the same subset every time, no global random state used
        rows = np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))
    subset = np.asarray(data[rows])  # an ImageSource decodes these rows only
    if labels is not None:
        labels = [str(label) for label in np.asarray(labels)[rows]]
    return subset, labels


def _thumbnails(images, run_info):
    """``(N, C, H, W)`` float images in [0, 1] (C = 1 or 3), or None for vectors."""
    images = np.asarray(images)
    if images.ndim == 2:
        layout = _image_layout(run_info)
        if layout is None or math.prod(layout) != images.shape[1]:
            return None
        c, h, w = layout
        images = images.reshape(-1, h, w, c)  # flattened rows are channels-last
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        if images.shape[-1] in (1, 3):
            images = images.transpose(0, 3, 1, 2)
        elif images.shape[1] not in (1, 3):
            return None
    else:
        return None
    if images.dtype == np.uint8:
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
    else:
        x = torch.from_numpy(np.asarray(images, dtype=np.float32))
        low, high = float(x.min()), float(x.max())
        x = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    # small enough to look at, and for the whole sprite to stay within its limit
    grid = math.ceil(math.sqrt(x.shape[0]))
    side = max(1, min(_MAX_THUMBNAIL_SIDE, _MAX_SPRITE_SIDE // grid))
    h, w = x.shape[-2:]
    if max(h, w) > side:
        scale = side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = torch.nn.functional.interpolate(x, size=size, mode="area")
    return x.clamp_(0.0, 1.0).numpy()


# -- the projector's files ------------------------------------------------------------
def _write_bytes(path, data):
    atomic_write(path, lambda file: file.write(data))


def _sprite_png(thumbnails):
    """The thumbnails tiled row by row on a square grid, as PNG bytes (RGB)."""
    from PIL import Image

    n, c, h, w = thumbnails.shape
    grid = math.ceil(math.sqrt(n))
    sprite = np.zeros((grid * h, grid * w, 3), dtype=np.uint8)
    tiles = np.round(thumbnails.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    if c == 1:
        tiles = np.repeat(tiles, 3, axis=3)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, grid)
        sprite[row * h:(row + 1) * h, col * w:(col + 1) * w] = tile
    buffer = BytesIO()
    Image.fromarray(sprite).save(buffer, format="PNG")
    return buffer.getvalue()


def write_projector(log_dir, subdir, name, features, labels=None, thumbnails=None):
    """Write one embedding for TensorBoard's projector, each file atomically.

    ``tensors.tsv``, ``metadata.tsv`` and ``sprite.png`` go to
    ``log_dir/subdir``; the embedding is added to ``projector_config.pbtxt``
    in ``log_dir`` (replacing one of the same ``name``).

    Parameters
    ----------
    log_dir : pathlib.Path
    subdir : str
        Folder of the embedding's files, relative to ``log_dir``.
    name : str
        The embedding's name in the projector.
    features : ndarray of shape (n_samples, n_features)
    labels : list of str, default=None
    thumbnails : ndarray of shape (n_samples, C, H, W), default=None
        Images in [0, 1], C = 1 or 3.
    """
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    folder = Path(log_dir) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    buffer = BytesIO()
    np.savetxt(buffer, features, fmt="%.6g", delimiter="\t")
    _write_bytes(folder / "tensors.tsv", buffer.getvalue())
    config_path = Path(log_dir) / "projector_config.pbtxt"
    config = ProjectorConfig()
    if config_path.exists():
        text_format.Parse(config_path.read_text(encoding="utf-8"), config)
    kept = [e for e in config.embeddings if e.tensor_name != name]
    del config.embeddings[:]
    config.embeddings.extend(kept)
    info = config.embeddings.add()
    info.tensor_name = name
    info.tensor_path = f"{subdir}/tensors.tsv"
    if labels is not None:
        # one column: no header line
        text = "".join(f"{' '.join(label.split())}\n" for label in labels)
        _write_bytes(folder / "metadata.tsv", text.encode("utf-8"))
        info.metadata_path = f"{subdir}/metadata.tsv"
    if thumbnails is not None:
        _write_bytes(folder / "sprite.png", _sprite_png(thumbnails))
        info.sprite.image_path = f"{subdir}/sprite.png"
        info.sprite.single_image_dim.extend([thumbnails.shape[3], thumbnails.shape[2]])
    _write_bytes(config_path, text_format.MessageToString(config).encode("utf-8"))


# public as skcueco.callbacks.TensorBoard: documented and pickled under that name
TensorBoard.__module__ = "skcueco.callbacks"

"""Callbacks: hooks into the training loop.

The hook names follow skorch (``on_train_begin``, ``on_epoch_begin``,
``on_batch_end``, ``on_epoch_end``, ``on_train_end``) so they map one to one
onto other callback APIs. Every hook receives the running
:class:`~skcueco.training.engine.Trainer`. Subclass :class:`Callback` for
your own; :class:`Checkpoint` lives with the rest of the checkpoint code in
:mod:`skcueco.training.checkpoint` and is re-exported here.
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._mlflow import MLflow
from ._tensorboard import TensorBoard
from .training.checkpoint import Checkpoint
from .training.hooks import Callback
from .training.distributed import get_world_size
from .training.trained import feature_scale


class ProgressBar(Callback):
    """A tqdm progress bar: over epochs, or over the steps of each epoch.

    By default one bar counts the epochs and shows the last epoch's mean
    loss. With ``per_batch=True`` (for long epochs) the bar counts the steps
    of the current epoch out of the epoch's total, with the percentage done,
    the time left in the epoch, the images per second and the running loss;
    it starts again at every epoch, labelled ``desc epoch/max_epochs``.

    Reading a loss from a GPU waits for the GPU to finish its queued work, so
    in per-batch mode the loss is read only when the bar redraws, at most
    once every ``mininterval`` seconds: between redraws the step losses are
    summed on their device and the bar shows their mean since the last
    redraw.

    Parameters
    ----------
    desc : str, default="CueCo"
        Label shown left of the bar.
    per_batch : bool, default=False
        Count the steps of each epoch instead of the epochs.
    mininterval : float, default=1.0
        Seconds between two redraws of the per-batch bar (and between two
        reads of the loss).
    batch_size : int, default=None
        Images per step, to show images per second. Default: the trainer's
        ``batch_size`` (the loader's) if it has one; without either the bar
        shows steps per second only.

    See Also
    --------
    skcueco.CueCoEmbedder : ``verbose=1`` adds a bar over epochs,
        ``verbose=2`` one over the steps of each epoch.

    Notes
    -----
    The number of steps per epoch is read from the trainer's
    ``steps_per_epoch`` attribute (the loader's length); without it the
    per-batch bar shows the steps done and the rate, but no total,
    percentage or time left. In distributed training the images per second
    count the images of all processes.
    """

    def __init__(self, desc="CueCo", per_batch=False, mininterval=1.0, batch_size=None):
        self.desc = desc
        self.per_batch = per_batch
        self.mininterval = mininterval
        self.batch_size = batch_size

    def on_train_begin(self, trainer):
        """Open the bar (on the main process only).

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        """
        disable = not trainer.is_main_process
        if not self.per_batch:
            self._bar = tqdm(
                total=trainer.max_epochs, initial=trainer.epoch, desc=self.desc,
                unit="epoch", disable=disable,
            )
            return
        batch_size = self.batch_size or getattr(trainer, "batch_size", None)
        # images of all processes per step
        self._images_per_step = batch_size * get_world_size() if batch_size else None
        self._bar = tqdm(
            total=getattr(trainer, "steps_per_epoch", None),
            desc=self._epoch_desc(trainer, trainer.epoch), unit="step",
            mininterval=self.mininterval, disable=disable, dynamic_ncols=True,
        )
        self._loss_sum, self._n_summed = None, 0
        self._last_read = time.monotonic()

    def _epoch_desc(self, trainer, epoch):
        return f"{self.desc} {epoch + 1}/{trainer.max_epochs}"

    def _postfix(self, loss, n_steps, seconds):
        """``"123 img/s, loss=1.2345"``; the rate only when it is known."""
        parts = []
        if self._images_per_step and seconds > 0:
            parts.append(f"{self._images_per_step * n_steps / seconds:.0f} img/s")
        parts.append(f"loss={loss:.4f}")
        return ", ".join(parts)

    def on_epoch_begin(self, trainer, epoch):
        """Restart the per-batch bar for a new epoch.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        epoch : int
            Index of the epoch (0-based).
        """
        if not self.per_batch:
            return
        # ``set_description`` appends ": ", and tqdm adds another without a total
        self._bar.set_description_str(self._epoch_desc(trainer, epoch), refresh=False)
        self._bar.reset(total=getattr(trainer, "steps_per_epoch", None))
        self._loss_sum, self._n_summed = None, 0
        self._last_read = time.monotonic()

    def on_batch_end(self, trainer, step, logs):
        """Advance the per-batch bar; read the loss only when it redraws.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        step : int
            Number of optimiser steps done so far.
        logs : dict of str to torch.Tensor
            The step's 0-d loss tensors, on the training device.
        """
        if not self.per_batch or self._bar.disable:
            return
        loss = logs["loss"].detach().float()
        # summed on its device: no host sync
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._n_summed += 1
        now = time.monotonic()
        if now - self._last_read >= self.mininterval:
            mean = self._loss_sum.item() / self._n_summed  # the only host sync
            self._bar.set_postfix_str(
                self._postfix(mean, self._n_summed, now - self._last_read), refresh=False)
            self._loss_sum, self._n_summed = None, 0
            self._last_read = now
        self._bar.update(1)

    def on_epoch_end(self, trainer, epoch, logs):
        """Show the epoch's mean loss (and, per batch, its images per second).

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        epoch : int
            Index of the epoch (0-based).
        logs : dict of str to float
            The epoch's history record.
        """
        if self.per_batch:
            self._bar.set_postfix_str(
                self._postfix(logs["loss"], self._bar.n, logs.get("seconds", 0.0)),
                refresh=False)
            self._bar.refresh()
        else:
            self._bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
            self._bar.update(1)

    def on_train_end(self, trainer):
        """Close the bar.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        """
        self._bar.close()


class EarlyStopping(Callback):
    """Stop when a history value stops improving.

    Parameters
    ----------
    monitor : str, default="loss"
        History column to watch (e.g. ``"loss"`` or ``"knn_accuracy"`` from
        :class:`KNNMonitor`, which must come before this callback).
    patience : int, default=5
        Epochs without improvement before stopping.
    min_delta : float, default=0.0
        Smallest change that counts as an improvement.
    mode : {"auto", "min", "max"}, default="auto"
        Whether lower or higher is better; ``"auto"``: higher for names that
        contain "acc", lower otherwise.

    Attributes
    ----------
    best_ : float
        Best value seen.
    best_epoch_ : int
        Epoch (1-based) of the best value.
    stopped_epoch_ : int or None
        Epoch after which training was stopped, None if it ran to the end.
    """

    def __init__(self, monitor="loss", patience=5, min_delta=0.0, mode="auto"):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}.")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}.")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.mode = mode

    def on_train_begin(self, trainer):
        mode = self.mode
        if mode == "auto":
            mode = "max" if "acc" in self.monitor else "min"
        self._sign = 1.0 if mode == "min" else -1.0
        self.best_, self.best_epoch_, self.stopped_epoch_ = None, None, None
        self._wait = 0

    def on_epoch_end(self, trainer, epoch, logs):
        if self.monitor not in logs:
            return  # e.g. a monitor that only runs every few epochs
        value = logs[self.monitor]
        if self.best_ is None or self._sign * (self.best_ - value) > self.min_delta:
            self.best_, self.best_epoch_, self._wait = value, epoch + 1, 0
            return
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch_ = epoch + 1
            trainer.stop_training = True


class KNNMonitor(Callback):
    """Weighted kNN accuracy of the current embeddings on labeled data.

    The field's standard monitor (as in MoCo and lightly): features are L2
    normalised, each query's ``k`` nearest neighbours in the labeled bank vote
    with weight ``exp(cos / temperature)``. Recorded as ``knn_accuracy`` in
    ``history_``. Like ``transform``'s output, the backbone features are
    standardised first, here with the bank's own mean and standard deviation
    (the training set's are only known at the end of ``fit``).

    Parameters
    ----------
    X_train, y_train : array-like
        The labeled bank (same layout as the training data).
    X_val, y_val : array-like
        The queries whose accuracy is measured.
    every : int, default=1
        Evaluate after every ``every``-th epoch (and the last one).
    k : int, default=200
        Number of neighbours (capped at the size of the bank).
    temperature : float, default=0.1
        Temperature of the vote weights.
    """

    def __init__(self, X_train, y_train, X_val, y_val, every=1, k=200, temperature=0.1):
        if len(X_train) != len(y_train) or len(X_val) != len(y_val):
            raise ValueError("KNNMonitor: X and y must have the same number of samples.")
        self.X_train, self.y_train = X_train, y_train
        self.X_val, self.y_val = X_val, y_val
        self.every = every
        self.k = k
        self.temperature = temperature

    def on_epoch_end(self, trainer, epoch, logs):
        last = trainer.epoch >= trainer.max_epochs or trainer.stop_training
        if (epoch + 1) % self.every and not last:
            return
        bank = np.asarray(trainer.embed(self.X_train), dtype=np.float32)
        queries = np.asarray(trainer.embed(self.X_val), dtype=np.float32)
        mean, scale = bank.mean(axis=0), feature_scale(bank.std(axis=0))
        bank, queries = (bank - mean) / scale, (queries - mean) / scale
        logs["knn_accuracy"] = knn_accuracy(
            bank, self.y_train, queries, self.y_val, k=self.k, temperature=self.temperature
        )


@torch.no_grad()
def knn_accuracy(bank, bank_labels, queries, query_labels, k=200, temperature=0.1):
    """Accuracy of a cosine-similarity, temperature-weighted kNN vote.

    Each query's ``k`` most cosine-similar rows of the bank vote for their
    label with weight ``exp(cos / temperature)``; the label with the largest
    total wins. Computed on the CPU in float32.

    Parameters
    ----------
    bank : array-like of shape (n_bank, d)
        Embeddings of the labeled bank; rows are L2-normalised here.
    bank_labels : array-like of shape (n_bank,)
        Label of each bank row.
    queries : array-like of shape (n_queries, d)
        Embeddings of the samples to classify; rows are L2-normalised here.
    query_labels : array-like of shape (n_queries,)
        True label of each query.
    k : int, default=200
        Number of neighbours, capped at ``n_bank``.
    temperature : float, default=0.1
        Temperature of the vote weights; smaller values favour the nearest
        neighbours more.

    Returns
    -------
    accuracy : float
        Fraction of queries whose predicted label equals their true label,
        in ``[0, 1]``.
    """
    classes, bank_codes = np.unique(np.asarray(bank_labels), return_inverse=True)
    bank = F.normalize(torch.as_tensor(np.asarray(bank), dtype=torch.float32), dim=1)
    queries = F.normalize(torch.as_tensor(np.asarray(queries), dtype=torch.float32), dim=1)
    codes = torch.as_tensor(bank_codes)
    k = min(k, bank.shape[0])
    votes = []
    for start in range(0, queries.shape[0], 1024):
        sim = queries[start:start + 1024] @ bank.T  # (B, n_bank)
        top_sim, top_idx = sim.topk(k, dim=1)  # (B, k)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], len(classes)).scatter_add_(
            1, codes[top_idx], weights
        )  # (B, n_classes)
        votes.append(scores.argmax(dim=1))
    predicted = classes[torch.cat(votes).numpy()]
    return float(np.mean(predicted == np.asarray(query_labels)))

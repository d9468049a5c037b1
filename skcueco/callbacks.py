"""Hooks into the training loop.

The hook names follow skorch (``on_train_begin``, ``on_epoch_begin``,
``on_batch_end``, ``on_epoch_end``, ``on_train_end``) so they map one to one
onto other callback APIs. Every hook receives the running
:class:`~skcueco.training.engine.Trainer`.
"""

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


class Callback:
    """Base class: override the hooks you need; all default to doing nothing.

    A callback can stop training by setting ``trainer.stop_training = True``.
    """

    def on_train_begin(self, trainer):
        """Called once before the first epoch."""

    def on_epoch_begin(self, trainer, epoch):
        """Called before each epoch with its index (0-based)."""

    def on_batch_end(self, trainer, step, logs):
        """Called after each optimiser step; ``logs`` holds device tensors."""

    def on_epoch_end(self, trainer, epoch, logs):
        """Called after each epoch; ``logs`` holds the epoch's Python floats."""

    def on_train_end(self, trainer):
        """Called once after the last epoch, also when training stopped early."""


class ProgressBar(Callback):
    """A tqdm bar over epochs showing the epoch's mean loss.

    Parameters
    ----------
    desc : str, default="CueCo"
        Label shown left of the bar.
    """

    def __init__(self, desc="CueCo"):
        self.desc = desc

    def on_train_begin(self, trainer):
        self._bar = tqdm(
            total=trainer.max_epochs, initial=trainer.epoch, desc=self.desc,
            unit="epoch", disable=not trainer.is_main_process,
        )

    def on_epoch_end(self, trainer, epoch, logs):
        self._bar.set_postfix(loss=f"{logs['loss']:.4f}")
        self._bar.update(1)

    def on_train_end(self, trainer):
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


class Checkpoint(Callback):
    """Save the full training state every few epochs, keeping the last few.

    Files are named ``epoch-0005.pt`` in ``dirname``; pass one to
    ``CueCoEmbedder.fit(X, resume_from=...)`` to continue training exactly
    where it stopped. They hold only tensors and plain values and are read
    with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    dirname : str or path-like
        Directory, created if needed.
    every : int, default=1
        Save after every ``every``-th epoch (and after the last one).
    keep_last : int, default=2
        Number of checkpoint files to keep; older ones are deleted.

    Attributes
    ----------
    saved_ : list of pathlib.Path
        Checkpoints written and still on disk, oldest first.
    """

    def __init__(self, dirname, every=1, keep_last=2):
        if every < 1 or keep_last < 1:
            raise ValueError("every and keep_last must be >= 1.")
        self.dirname = dirname
        self.every = every
        self.keep_last = keep_last

    def on_train_begin(self, trainer):
        self._dir = Path(self.dirname)
        self._dir.mkdir(parents=True, exist_ok=True)
        self.saved_ = sorted(self._dir.glob("epoch-*.pt"))

    def on_epoch_end(self, trainer, epoch, logs):
        last = trainer.epoch >= trainer.max_epochs or trainer.stop_training
        if (epoch + 1) % self.every == 0 or last:
            self._save(trainer, epoch)

    def on_train_end(self, trainer):
        # a stop requested after this callback ran (e.g. by EarlyStopping later
        # in the list) still gets its final checkpoint
        done = trainer.epoch
        if done and not trainer.interrupted and self._path(done - 1) not in self.saved_:
            self._save(trainer, done - 1)

    def _path(self, epoch):
        return self._dir / f"epoch-{epoch + 1:04d}.pt"

    def _save(self, trainer, epoch):
        if not trainer.is_main_process:
            return
        path = self._path(epoch)
        tmp = path.with_suffix(".tmp")
        torch.save(trainer.state_dict(), tmp)
        os.replace(tmp, path)  # never leave a half-written checkpoint
        if path not in self.saved_:
            self.saved_.append(path)
        while len(self.saved_) > self.keep_last:
            self.saved_.pop(0).unlink(missing_ok=True)


class KNNMonitor(Callback):
    """Weighted kNN accuracy of the current embeddings on labeled data.

    The field's standard monitor (as in MoCo and lightly): features are L2
    normalised, each query's ``k`` nearest neighbours in the labeled bank vote
    with weight ``exp(cos / temperature)``. Recorded as ``knn_accuracy`` in
    ``history_``.

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
        bank = trainer.embed(self.X_train)
        queries = trainer.embed(self.X_val)
        logs["knn_accuracy"] = knn_accuracy(
            bank, self.y_train, queries, self.y_val, k=self.k, temperature=self.temperature
        )


@torch.no_grad()
def knn_accuracy(bank, bank_labels, queries, query_labels, k=200, temperature=0.1):
    """Accuracy of a cosine-similarity, temperature-weighted kNN vote.

    Parameters
    ----------
    bank : array-like of shape (n_bank, d)
    bank_labels : array-like of shape (n_bank,)
    queries : array-like of shape (n_queries, d)
    query_labels : array-like of shape (n_queries,)
    k : int, default=200
    temperature : float, default=0.1

    Returns
    -------
    accuracy : float
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

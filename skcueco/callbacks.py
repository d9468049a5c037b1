"""Hooks into the training loop.

The hook names follow skorch (``on_train_begin``, ``on_epoch_begin``,
``on_batch_end``, ``on_epoch_end``, ``on_train_end``) so they map one to one
onto other callback APIs. Every hook receives the running
:class:`~skcueco.training.engine.Trainer`.
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .training.distributed import get_world_size


class Callback:
    """Base class: override the hooks you need; all default to doing nothing.

    A callback can stop training by setting ``trainer.stop_training = True``.
    """

    def on_train_begin(self, trainer):
        """Called once before the first epoch.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        """

    def on_epoch_begin(self, trainer, epoch):
        """Called before each epoch.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        epoch : int
            Index of the epoch (0-based).
        """

    def on_batch_end(self, trainer, step, logs):
        """Called after each optimiser step.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        step : int
            Number of optimiser steps done so far, this one included.
        logs : dict of str to torch.Tensor
            The step's detached 0-d loss tensors (``"loss"`` and its terms),
            on the training device: reading one (``.item()``) waits for the
            device.
        """

    def on_epoch_end(self, trainer, epoch, logs):
        """Called after each epoch.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        epoch : int
            Index of the epoch (0-based).
        logs : dict of str to float
            The epoch's record, already in ``trainer.history``: ``"epoch"``
            (1-based), the mean of each loss term over the epoch's steps,
            ``"lr"``, ``"seconds"`` and the task's values. Entries a callback
            adds (as :class:`KNNMonitor` does) enter the history too.
        """

    def on_train_end(self, trainer):
        """Called once after the last epoch, also when training stopped early.

        It is called too when training ends on an interrupt or an error.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        """


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

    Writes are atomic (a temporary file, flushed to disk, then renamed): a
    checkpoint is complete or absent, never damaged. ``KeyboardInterrupt``
    during a write keeps the finished epoch in the model and removes the
    temporary file. A write that fails (a full disk) raises an ``OSError``
    naming the file and the checkpoints that remain.

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

    def on_epoch_end(self, trainer, epoch, logs):
        last = trainer.epoch >= trainer.max_epochs or trainer.stop_training
        if (epoch + 1) % self.every == 0 or last:
            self._save(trainer, epoch)

    def on_train_end(self, trainer):
        # a stop requested after this callback ran (e.g. by EarlyStopping later
        # in the list) still gets its final checkpoint; not after an interrupt,
        # an error or a failed write
        done = trainer.epoch
        if (done and not trainer.interrupted and not getattr(trainer, "failed", False)
                and not self._failed and self._path(done - 1) not in self.saved_):
            self._save(trainer, done - 1)

    def _path(self, epoch):
        return self._dir / f"epoch-{epoch + 1:04d}.pt"

    def _save(self, trainer, epoch):
        if not trainer.is_main_process:
            return
        from ._persistence import atomic_save

        path = self._path(epoch)
        kept = [p.name for p in self.saved_ if p != path]
        try:
            atomic_save(trainer.state_dict(), path, kept=(
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
    from ._persistence import checkpoint_owner

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
        mean, scale = bank.mean(axis=0), _feature_scale(bank.std(axis=0))
        bank, queries = (bank - mean) / scale, (queries - mean) / scale
        logs["knn_accuracy"] = knn_accuracy(
            bank, self.y_train, queries, self.y_val, k=self.k, temperature=self.temperature
        )


def _feature_scale(std):
    """Standard deviations as float32 divisors; 1 for (nearly) constant features.

    A feature whose standard deviation is negligible against the others'
    (a dead unit) keeps a scale of 1, so its rounding noise is not blown up
    to unit variance.
    """
    std = np.asarray(std, dtype=np.float64)
    return np.where(std > 1e-4 * std.mean(), std, 1.0).astype(np.float32)


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

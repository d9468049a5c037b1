"""Hooks into the training loop.

The hook names follow skorch (``on_train_begin``, ``on_epoch_begin``,
``on_batch_end``, ``on_epoch_end``, ``on_train_end``) so they map one to one
onto other callback APIs. Every hook receives the running
:class:`~skcueco._engine.Trainer`.
"""

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

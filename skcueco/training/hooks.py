"""The hooks of the training loop: the :class:`Callback` base class.

The hook names follow skorch (``on_train_begin``, ``on_epoch_begin``,
``on_batch_end``, ``on_epoch_end``, ``on_train_end``) so they map one to one
onto other callback APIs. Every hook receives the running
:class:`~skcueco.training.engine.Trainer`. The callbacks users pick from are
in :mod:`skcueco.callbacks`.
"""


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

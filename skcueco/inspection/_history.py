"""TrainingHistoryDisplay: the training curves recorded in ``history_``."""

import numpy as np
import pandas as pd
from sklearn.utils._optional_dependencies import check_matplotlib_support

from ._common import _axes_grid, _from_estimator_embedder

# (title, columns) of each panel, in order; panels without any column are skipped
_HISTORY_PANELS = [
    ("loss", ("loss", "contrastive", "clustering")),
    ("learning rate", ("lr",)),
    ("cluster weight", ("cluster_weight",)),
    ("kNN accuracy", ("knn_accuracy",)),
]


class TrainingHistoryDisplay:
    """Training curves of a CueCo run, per epoch.

    One panel per quantity recorded in ``history_``, sharing the epoch axis:
    the loss with its contrastive and clustering terms, the learning rate,
    the weight of the clustering term, and the kNN accuracy when a
    :class:`~skcueco.callbacks.KNNMonitor` recorded it (its points only, on
    the epochs it ran).

    Use :meth:`from_estimator` or :meth:`from_history` to create one.

    Parameters
    ----------
    history : pandas.DataFrame
        One row per epoch with an ``epoch`` column and any of ``loss``,
        ``contrastive``, ``clustering``, ``lr``, ``cluster_weight`` and
        ``knn_accuracy``, as in ``CueCoEmbedder.history_``.

    Attributes
    ----------
    figure_ : matplotlib Figure
        Figure holding the panels.
    axes_ : ndarray of matplotlib Axes of shape (n_panels,)
        The panels, top to bottom.
    lines_ : dict of str to matplotlib Line2D
        The curve of each plotted column, keyed by column name.
    bounding_ax_ : matplotlib Axes or None
        The Axes passed as ``ax`` whose area holds the panels, else None.

    See Also
    --------
    skcueco.callbacks.KNNMonitor : Records ``knn_accuracy`` during training.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.inspection import TrainingHistoryDisplay
    >>> X = load_digits().images[:64]
    >>> embedder = CueCoEmbedder(max_epochs=2, batch_size=32, hidden_dim=32,
    ...                          projection_dim=16, queue_size=64, n_clusters=3,
    ...                          cluster_warmup=1, random_state=0).fit(X)
    >>> display = TrainingHistoryDisplay.from_estimator(embedder)
    >>> sorted(display.lines_)
    ['cluster_weight', 'clustering', 'contrastive', 'loss', 'lr']
    >>> plt.show()
    """

    def __init__(self, history):
        self.history = history

    def plot(self, ax=None):
        """Draw the curves.

        Parameters
        ----------
        ax : matplotlib Axes or array-like of Axes, default=None
            None draws on a new figure. One Axes: its area is divided into
            the panels. An array: one Axes per panel.

        Returns
        -------
        display : TrainingHistoryDisplay
            Object that stores the computed values and the matplotlib artists.
        """
        check_matplotlib_support(f"{type(self).__name__}.plot")
        from matplotlib.ticker import MaxNLocator

        history = _check_history(self.history)
        panels = [(title, [c for c in columns if c in history.columns])
                  for title, columns in _HISTORY_PANELS]
        panels = [(title, columns) for title, columns in panels if columns]
        n = len(panels)
        fig, axes, bounding_ax = _axes_grid(ax, n, 1, (6.4, 1.1 + 1.7 * n),
                                            type(self).__name__, sharex=True)
        axes = axes[:, 0]
        self.lines_ = {}
        epochs = history["epoch"].to_numpy()
        for panel_ax, (title, columns) in zip(axes, panels, strict=True):
            for column in columns:
                values = history[column].to_numpy(dtype=np.float64)
                if column == "knn_accuracy":  # recorded on some epochs only
                    kept = ~np.isnan(values)
                    (line,) = panel_ax.plot(epochs[kept], values[kept], marker="o",
                                            label=column)
                else:
                    (line,) = panel_ax.plot(epochs, values, label=column,
                                            marker="o" if len(epochs) < 30 else None,
                                            markersize=3)
                self.lines_[column] = line
            panel_ax.set_ylabel(title)
            if len(columns) > 1:
                panel_ax.legend(fontsize="small")
            panel_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[-1].set_xlabel("epoch")
        self.figure_, self.axes_, self.bounding_ax_ = fig, axes, bounding_ax
        return self

    @classmethod
    def from_estimator(cls, estimator, *, ax=None):
        """Plot the ``history_`` of a fitted embedder.

        Parameters
        ----------
        estimator : CueCoEmbedder or CueCoClassifier
            Fitted for at least one epoch.
        ax : matplotlib Axes or array-like of Axes, default=None
            See :meth:`plot`.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        _, embedder = _from_estimator_embedder(cls, estimator)
        return cls(embedder.history_.copy()).plot(ax=ax)

    @classmethod
    def from_history(cls, history, *, ax=None):
        """Plot a training history.

        Parameters
        ----------
        history : pandas.DataFrame
            As ``CueCoEmbedder.history_``, e.g. saved with ``to_csv`` and
            read back.
        ax : matplotlib Axes or array-like of Axes, default=None
            See :meth:`plot`.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        check_matplotlib_support(f"{cls.__name__}.from_history")
        return cls(_check_history(history).copy()).plot(ax=ax)


def _check_history(history):
    if not isinstance(history, pd.DataFrame):
        raise TypeError(
            "history must be a pandas DataFrame like CueCoEmbedder.history_, got "
            f"{type(history).__name__}."
        )
    if "epoch" not in history.columns:
        raise ValueError("history has no 'epoch' column.")
    if len(history) == 0:
        raise ValueError("history is empty: the estimator was trained for 0 epochs.")
    plotted = [c for _, columns in _HISTORY_PANELS for c in columns]
    if not any(c in history.columns for c in plotted):
        raise ValueError(f"history has none of the columns {plotted}.")
    return history

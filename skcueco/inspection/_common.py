"""What the inspection displays share: input checks, image reading, the image grid."""

import numbers

import numpy as np
import pandas as pd
from sklearn.frozen import FrozenEstimator
from sklearn.utils._optional_dependencies import check_matplotlib_support
from sklearn.utils.validation import check_is_fitted

from .. import CueCoClassifier, CueCoEmbedder, ImageSource

# side, in inches, of one image cell of the image grids
_CELL_INCHES = 0.85


# -- input checking ---------------------------------------------------------------
def _fitted_embedder(estimator, caller):
    """The fitted CueCoEmbedder behind ``estimator``."""
    if isinstance(estimator, CueCoClassifier):
        check_is_fitted(estimator)
        estimator = estimator.embedder_
    if isinstance(estimator, FrozenEstimator):
        estimator = estimator.estimator
    if not isinstance(estimator, CueCoEmbedder):
        raise TypeError(
            f"{caller} needs a CueCoEmbedder or a CueCoClassifier, got "
            f"{type(estimator).__name__}."
        )
    check_is_fitted(estimator)
    return estimator


def _from_estimator_embedder(cls, estimator):
    """``(caller, embedder)`` for ``cls.from_estimator``.

    Checks that matplotlib is installed, then returns the name of the
    method for error messages and the fitted CueCoEmbedder behind
    ``estimator``.
    """
    caller = f"{cls.__name__}.from_estimator"
    check_matplotlib_support(caller)
    return caller, _fitted_embedder(estimator, caller)


def _image_shape(embedder, caller):
    """The embedder's ``(C, H, W)``, or a ValueError for a vector embedder."""
    if embedder.image_shape_ is None:
        raise ValueError(
            f"{caller} shows images, but this CueCoEmbedder was fitted on feature "
            "vectors (image_shape_ is None)."
        )
    return embedder.image_shape_


def _check_int(value, name, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def _check_embeddings(Z, name):
    Z = np.asarray(Z)
    if Z.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {Z.dtype}.")
    if Z.ndim != 2 or Z.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (n_samples, n_features), got "
            f"shape {Z.shape}."
        )
    if not np.isfinite(Z).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    return Z


class _Images:
    """Images in any form the estimators read, decoded a selection at a time.

    Parameters
    ----------
    X : array-like, ImageSource or what ImageSource reads
    image_shape : tuple of int or None
        The embedder's ``(C, H, W)``: reads flattened 2-D rows, and sets the
        size and colour mode images from files are decoded at. None: 2-D
        arrays are refused, ImageSources are read as they are.
    name : str
        Name of ``X`` in error messages.

    Attributes
    ----------
    data : ndarray or ImageSource
        What to give the embedder: ``X`` itself for arrays, an ImageSource
        (in the embedder's format) otherwise.
    """

    def __init__(self, X, image_shape, name="X"):
        self.name = name
        self.source = None
        fmt = {}
        if image_shape is not None and image_shape[0] in (1, 3):
            c, h, w = image_shape
            fmt = {"image_size": (h, w), "mode": "RGB" if c == 3 else "L"}
        if isinstance(X, ImageSource):
            self.source = X.with_format(**fmt) if fmt else X
        elif not (isinstance(X, pd.DataFrame)
                  or isinstance(X, np.ndarray) and X.dtype.kind in "biuf"):
            try:  # file paths, a folder, PIL images or a torch Dataset
                self.source = ImageSource(X, **fmt)
            except TypeError:  # nested lists of numbers: an array
                pass
        if self.source is not None:
            self.data = self.source
            self.channels = 3 if self.source.mode == "RGB" else 1
            return
        self.data = X
        self._array, self._offset, self._scale = self._read_array(X, image_shape)
        self.channels = self._array.shape[-1]

    def _read_array(self, X, image_shape):
        A = X.to_numpy() if isinstance(X, pd.DataFrame) else np.asarray(X)
        if A.dtype.kind not in "biuf":
            raise TypeError(
                f"{self.name} must hold images of real numbers, got dtype {A.dtype}."
            )
        if A.ndim == 2:
            if image_shape is None:
                raise ValueError(
                    f"{self.name} is a 2-D array of shape {A.shape}: give images as "
                    "an array of shape (n_samples, height, width[, channels]) or an "
                    "ImageSource."
                )
            c, h, w = image_shape
            if A.shape[1] != c * h * w:
                raise ValueError(
                    f"{self.name} has {A.shape[1]} values per row, but the embedder "
                    f"reads images of shape (C, H, W) = {tuple(image_shape)}, i.e. "
                    f"{c * h * w} values."
                )
            A = A.reshape(len(A), h, w, c)
        elif A.ndim == 3:
            A = A[..., np.newaxis]
        elif A.ndim == 4:
            if A.shape[3] not in (1, 3):
                if A.shape[1] not in (1, 3):
                    raise ValueError(
                        f"Cannot tell the channel axis of {self.name} of shape "
                        f"{A.shape}: expected (n_samples, height, width, channels) "
                        "or (n_samples, channels, height, width) with 1 or 3 channels."
                    )
                A = A.transpose(0, 2, 3, 1)
        else:
            raise ValueError(
                f"{self.name} must be images of shape (n_samples, height, width), "
                "(n_samples, height, width, channels), (n_samples, channels, height, "
                f"width) or flattened rows; got an array of shape {A.shape}."
            )
        if len(A) == 0:
            raise ValueError(f"{self.name} holds no images (shape {A.shape}).")
        if A.shape[3] not in (1, 3):
            raise ValueError(
                f"Only 1- or 3-channel images can be shown; {self.name} has "
                f"{A.shape[3]} channels."
            )
        # the embedder's value rule: uint8 / 255, [0, 1] as is, else by the range
        if A.dtype == np.uint8:
            return A, 0.0, 255.0
        if A.dtype.kind == "b":
            return A, 0.0, 1.0
        lo, hi = float(np.min(A)), float(np.max(A))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{self.name} contains NaN or infinity.")
        if lo >= 0 and hi <= 1:
            return A, 0.0, 1.0
        offset = min(lo, 0.0)
        return A, offset, (hi - offset) or 1.0

    def __len__(self):
        return len(self.data) if self.source is not None else len(self._array)

    def take(self, indices):
        """Images of rows ``indices`` as floats in [0, 1].

        Returns
        -------
        images : ndarray of shape (n, H, W) (grayscale) or (n, H, W, 3) (RGB)
        """
        indices = np.asarray(indices, dtype=np.intp).ravel()
        if self.source is not None:
            # decode each selected image once, and nothing else
            unique, inverse = np.unique(indices, return_inverse=True)
            h, w = self.source.image_size
            rows = self.source[unique].reshape(len(unique), h, w, self.channels)
            images = rows[inverse.ravel()] / 255.0
        else:
            images = (self._array[indices].astype(np.float64) - self._offset) / self._scale
            images = np.clip(images, 0.0, 1.0)
        return images[..., 0] if self.channels == 1 else images


# -- drawing helpers ------------------------------------------------------------------
def _axes_grid(ax, n_rows, n_cols, figsize, caller, **subplots_kw):
    """``(figure, axes (n_rows, n_cols), bounding_ax)`` to draw a grid on.

    ``ax`` is None (a new figure), one Axes whose area holds the grid (it is
    switched off and returned as ``bounding_ax``), or ``n_rows * n_cols``
    Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is None:
        fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, figsize=figsize,
                                 layout="constrained", **subplots_kw)
        return fig, axes, None
    if isinstance(ax, Axes):
        spec = ax.get_subplotspec()
        if spec is None:
            raise ValueError(
                f"{caller}: ax must be an Axes made by plt.subplots or "
                "figure.add_subplot (its area is divided into the grid), or an "
                f"array of {n_rows * n_cols} Axes."
            )
        ax.set_axis_off()
        grid = spec.subgridspec(n_rows, n_cols)
        axes = np.empty((n_rows, n_cols), dtype=object)
        for i in range(n_rows):
            for j in range(n_cols):
                axes[i, j] = ax.figure.add_subplot(grid[i, j])
        return ax.figure, axes, ax
    axes = np.asarray(ax, dtype=object)
    if axes.size != n_rows * n_cols or not all(isinstance(a, Axes) for a in axes.flat):
        raise ValueError(
            f"{caller}: ax must be None, one Axes or {n_rows * n_cols} Axes "
            f"({n_rows} rows x {n_cols} columns); got {axes.size} object(s)."
        )
    axes = axes.reshape(n_rows, n_cols)
    return axes[0, 0].figure, axes, None


def _show_image(ax, image, cmap):
    ax.set_xticks([])
    ax.set_yticks([])
    if image.ndim == 2:
        return ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    return ax.imshow(image, interpolation="nearest")


def _blank(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _plot_image_grid(display, ax, shape, cell, figsize, cmap):
    """Draw a grid of image cells and store its artists on ``display``.

    Sets ``display.figure_``, ``axes_``, ``ims_`` (the ``AxesImage`` of each
    cell, None for an empty cell) and ``bounding_ax_``.

    Parameters
    ----------
    display : object
        The display drawing the grid; its class names it in error messages.
    ax : None, matplotlib Axes or array-like of Axes
        Where to draw, as :func:`_axes_grid` reads it.
    shape : tuple of (int, int)
        ``(n_rows, n_cols)`` of the grid.
    cell : callable
        ``cell(i, j)`` is the image of cell ``(i, j)``, in [0, 1], of shape
        ``(H, W)`` or ``(H, W, 3)``; None leaves the cell empty.
    figsize : tuple of (float, float)
        Size of a new figure, in inches.
    cmap : str or matplotlib Colormap
        Colormap of grayscale images.

    Returns
    -------
    axes : ndarray of matplotlib Axes of shape (n_rows, n_cols)
    """
    n_rows, n_cols = shape
    fig, axes, bounding_ax = _axes_grid(ax, n_rows, n_cols, figsize, type(display).__name__)
    ims = np.empty((n_rows, n_cols), dtype=object)
    for i in range(n_rows):
        for j in range(n_cols):
            image = cell(i, j)
            if image is None:
                _blank(axes[i, j])
            else:
                ims[i, j] = _show_image(axes[i, j], np.asarray(image), cmap)
    display.figure_, display.axes_, display.ims_ = fig, axes, ims
    display.bounding_ax_ = bounding_ax
    return axes

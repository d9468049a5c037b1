"""Look inside a fitted embedder: cluster galleries, retrieval, maps, curves.

The displays follow scikit-learn's visualisation API (as
:class:`sklearn.metrics.ConfusionMatrixDisplay` does): a display object
holds the computed data, ``plot`` draws it with matplotlib and returns the
display, and the ``from_estimator`` class methods compute the data from a
fitted :class:`~skcueco.CueCoEmbedder` (or a fitted
:class:`~skcueco.CueCoClassifier`, whose ``embedder_`` is used) and plot it.

- :class:`ClusterGalleryDisplay` -- the training images nearest to each
  learned centroid, one row per cluster: what the clusters mean.
- :class:`NearestNeighborsDisplay` -- for query images, the most similar
  images of a reference set (image retrieval by cosine similarity).
- :class:`EmbeddingMapDisplay` -- a 2-D map (PCA or t-SNE) of the
  embeddings, coloured by cluster or by class, with optional thumbnails.
- :class:`TrainingHistoryDisplay` -- the loss terms, learning rate, cluster
  weight and kNN accuracy recorded in ``history_``, per epoch.

Images can be given in every form the estimators read: arrays of shape
``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, flattened 2-D rows
(read with the embedder's ``image_shape_``, flattened ``H, W, C``), or an
:class:`~skcueco.ImageSource` (and the files, folders, PIL images and
Datasets it reads). Only the images drawn are decoded from an ImageSource.

matplotlib is an optional dependency: ``pip install skcueco[plot]``.
"""

import numbers

import numpy as np
import pandas as pd
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils._optional_dependencies import check_matplotlib_support
from sklearn.utils.validation import check_is_fitted

from . import CueCoClassifier, CueCoEmbedder, ImageSource

__all__ = [
    "ClusterGalleryDisplay",
    "EmbeddingMapDisplay",
    "NearestNeighborsDisplay",
    "TrainingHistoryDisplay",
]

# side, in inches, of one image cell of the image grids
_CELL_INCHES = 0.85
# on-screen size, in pixels, of the longer side of a thumbnail on a map
_THUMBNAIL_PIXELS = 32
# thumbnails drawn on a map when `thumbnails=True`
_DEFAULT_N_THUMBNAILS = 30


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


def _palette(n):
    """``n`` distinct RGBA colours: tab10, tab20, then evenly spaced hues."""
    import matplotlib as mpl
    from matplotlib.colors import to_rgba_array

    if n <= 10:
        return to_rgba_array(mpl.colormaps["tab10"].colors[:n])
    if n <= 20:
        return to_rgba_array(mpl.colormaps["tab20"].colors[:n])
    return mpl.colormaps["hsv"](np.linspace(0.0, 1.0, n, endpoint=False))


def _unit_rows(Z):
    Z = np.asarray(Z, dtype=np.float64)
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def _cosine_top_k(Q, R, k, chunk_size=1024):
    """Indices and cosine similarities of the ``k`` rows of ``R`` nearest each row of ``Q``."""
    Q, R = _unit_rows(Q), _unit_rows(R)
    indices = np.empty((len(Q), k), dtype=np.intp)
    similarities = np.empty((len(Q), k))
    for start in range(0, len(Q), chunk_size):
        S = Q[start:start + chunk_size] @ R.T
        order = np.argsort(-S, axis=1, kind="stable")[:, :k]
        indices[start:start + chunk_size] = order
        similarities[start:start + chunk_size] = np.take_along_axis(S, order, axis=1)
    return indices, similarities


# -- cluster gallery -----------------------------------------------------------------
class ClusterGalleryDisplay:
    """The images nearest to each learned centroid, one row per cluster.

    The gallery shows what the clusters of a :class:`~skcueco.CueCoEmbedder`
    stand for. Row ``i`` shows the images of cluster ``clusters[i]``: among
    the images that ``predict`` assigns to that cluster, the ``n_images``
    whose projections have the highest cosine similarity to its centroid,
    most similar first. The row label gives the cluster index and its size.

    Use :meth:`from_estimator` to create one; the constructor takes data
    that is already computed.

    Parameters
    ----------
    images : ndarray of shape (n_rows, n_images, height, width) or \
            (n_rows, n_images, height, width, 3)
        Images in [0, 1], grayscale or RGB. Cells whose index is -1 are
        left empty.
    indices : ndarray of int of shape (n_rows, n_images)
        Sample shown in each cell (a row of ``X``), -1 for an empty cell.
    cluster_sizes : ndarray of int of shape (n_rows,)
        Number of samples assigned to each shown cluster.
    clusters : ndarray of int of shape (n_rows,), default=None
        Cluster index of each row. None means ``0, 1, ..., n_rows - 1``.
    similarities : ndarray of shape (n_rows, n_images), default=None
        Cosine similarity of each shown image to its centroid, NaN for an
        empty cell.

    Attributes
    ----------
    figure_ : matplotlib Figure
        Figure holding the gallery.
    axes_ : ndarray of matplotlib Axes of shape (n_rows, n_images)
        ``axes_[i, j]`` shows the ``j``-th image of row ``i``.
    ims_ : ndarray of shape (n_rows, n_images), dtype=object
        The ``AxesImage`` of each cell, None for an empty cell.
    bounding_ax_ : matplotlib Axes or None
        The Axes passed as ``ax`` whose area holds the grid, else None.

    See Also
    --------
    NearestNeighborsDisplay : The images most similar to given queries.
    EmbeddingMapDisplay : A 2-D map of the embeddings coloured by cluster.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.inspection import ClusterGalleryDisplay
    >>> X = load_digits().images[:64]
    >>> embedder = CueCoEmbedder(max_epochs=1, batch_size=32, hidden_dim=32,
    ...                          projection_dim=16, queue_size=64, n_clusters=3,
    ...                          cluster_warmup=0, random_state=0).fit(X)
    >>> display = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=4)
    >>> display.indices.shape
    (3, 4)
    >>> int(display.cluster_sizes.sum())
    64
    >>> plt.show()
    """

    def __init__(self, images, indices, cluster_sizes, *, clusters=None, similarities=None):
        self.images = images
        self.indices = indices
        self.cluster_sizes = cluster_sizes
        self.clusters = clusters
        self.similarities = similarities

    def plot(self, ax=None, *, cmap="gray"):
        """Draw the gallery.

        Parameters
        ----------
        ax : matplotlib Axes or array-like of Axes, default=None
            None draws on a new figure. One Axes: its area is divided into
            the grid of cells. An array: one Axes per cell, ``n_rows *
            n_images`` of them.
        cmap : str or matplotlib Colormap, default="gray"
            Colormap of grayscale images (ignored for RGB).

        Returns
        -------
        display : ClusterGalleryDisplay
            Object that stores the computed values and the matplotlib artists.
        """
        check_matplotlib_support(f"{type(self).__name__}.plot")
        indices = np.asarray(self.indices)
        images = np.asarray(self.images)
        n_rows, n_cols = indices.shape
        clusters = np.arange(n_rows) if self.clusters is None else np.asarray(self.clusters)
        sizes = np.asarray(self.cluster_sizes)
        figsize = (1.3 + _CELL_INCHES * n_cols, 0.3 + _CELL_INCHES * n_rows)
        fig, axes, bounding_ax = _axes_grid(ax, n_rows, n_cols, figsize, type(self).__name__)
        ims = np.empty((n_rows, n_cols), dtype=object)
        for i in range(n_rows):
            for j in range(n_cols):
                if indices[i, j] >= 0:
                    ims[i, j] = _show_image(axes[i, j], images[i, j], cmap)
                else:
                    _blank(axes[i, j])
            size = int(sizes[i])
            axes[i, 0].set_ylabel(
                f"cluster {clusters[i]}\n{size} image{'s' if size != 1 else ''}",
                rotation=0, ha="right", va="center", fontsize="small",
            )
        self.figure_, self.axes_, self.ims_, self.bounding_ax_ = fig, axes, ims, bounding_ax
        return self

    @classmethod
    def from_estimator(cls, estimator, X, *, n_images=8, clusters=None, ax=None, cmap="gray"):
        """Show the images of ``X`` nearest to each centroid of a fitted embedder.

        Every image of ``X`` is projected (one pass through the network) and
        assigned to its nearest centroid, as ``predict`` does; then only the
        images shown are read back for display, so an
        :class:`~skcueco.ImageSource` decodes those images a second time and
        no others.

        Parameters
        ----------
        estimator : CueCoEmbedder or CueCoClassifier
            Fitted on images.
        X : array-like or ImageSource
            Images in a layout the estimator accepts (usually its training
            set): ``(N, H, W)``, ``(N, H, W, C)``, ``(N, C, H, W)``, rows
            flattened ``H, W, C``, or an :class:`~skcueco.ImageSource` (or
            the paths, folder, PIL images or Dataset it reads).
        n_images : int, default=8
            Images per cluster (columns of the gallery). Clusters with fewer
            assigned images leave cells empty.
        clusters : array-like of int, default=None
            Clusters to show, one row each, in this order. None shows all.
        ax : matplotlib Axes or array-like of Axes, default=None
            See :meth:`plot`.
        cmap : str or matplotlib Colormap, default="gray"
            Colormap of grayscale images.

        Returns
        -------
        display : ClusterGalleryDisplay
        """
        caller = f"{cls.__name__}.from_estimator"
        check_matplotlib_support(caller)
        embedder = _fitted_embedder(estimator, caller)
        n_images = _check_int(n_images, "n_images", 1)
        images = _Images(X, _image_shape(embedder, caller))
        centers = embedder.cluster_centers_
        clusters = _check_clusters(clusters, len(centers))

        projections = embedder._project(images.data)
        # the assignment exactly as `predict` computes it; the ranking in float64
        assigned = (torch.from_numpy(projections) @ torch.from_numpy(centers).T).argmax(
            dim=1).numpy()
        similarity = projections.astype(np.float64) @ centers.astype(np.float64).T
        sizes = np.bincount(assigned, minlength=len(centers))[clusters]

        indices = np.full((len(clusters), n_images), -1, dtype=np.intp)
        similarities = np.full((len(clusters), n_images), np.nan)
        for row, k in enumerate(clusters):
            members = np.flatnonzero(assigned == k)
            nearest = members[np.argsort(-similarity[members, k], kind="stable")][:n_images]
            indices[row, :len(nearest)] = nearest
            similarities[row, :len(nearest)] = similarity[nearest, k]

        shown = indices >= 0
        pictures = images.take(indices[shown])
        gallery = np.full((*indices.shape, *pictures.shape[1:]), np.nan)
        gallery[shown] = pictures
        display = cls(gallery, indices, sizes, clusters=clusters, similarities=similarities)
        return display.plot(ax=ax, cmap=cmap)


def _check_clusters(clusters, n_clusters):
    if clusters is None:
        return np.arange(n_clusters)
    values = np.asarray(clusters)
    if values.ndim == 0:
        values = values.reshape(1)
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iu":
        raise ValueError(
            f"clusters must be a non-empty list of cluster indices, got {clusters!r}."
        )
    bad = (values < 0) | (values >= n_clusters)
    if bad.any():
        raise ValueError(
            f"clusters must be in [0, {n_clusters}) (the embedder has {n_clusters} "
            f"centroids), got {values[bad][0]}."
        )
    return values.astype(np.intp)


# -- retrieval -----------------------------------------------------------------------
class NearestNeighborsDisplay:
    """For each query image, the most similar images of a reference set.

    Image retrieval with learned embeddings: reference images are ranked by
    the cosine similarity of their embeddings to the query's. Row ``i`` of
    the grid shows query ``i`` in the first column, then its
    ``n_neighbors`` nearest reference images, most similar first, each
    titled with its similarity.

    Use :meth:`from_estimator` or :meth:`from_embeddings` to create one; the
    constructor takes data that is already computed.

    Parameters
    ----------
    query_images : ndarray of shape (n_queries, height, width) or \
            (n_queries, height, width, 3)
        Query images in [0, 1].
    neighbor_images : ndarray of shape (n_queries, n_neighbors, height, width) \
            or (n_queries, n_neighbors, height, width, 3)
        Images of the neighbours in [0, 1].
    indices : ndarray of int of shape (n_queries, n_neighbors)
        Rows of the reference set, most similar first.
    similarities : ndarray of shape (n_queries, n_neighbors)
        Cosine similarity of each neighbour to its query.

    Attributes
    ----------
    figure_ : matplotlib Figure
        Figure holding the grid.
    axes_ : ndarray of matplotlib Axes of shape (n_queries, n_neighbors + 1)
        Column 0 shows the queries, column ``j`` their ``j``-th neighbour.
    ims_ : ndarray of matplotlib AxesImage of shape (n_queries, n_neighbors + 1)
        The image artist of each cell.
    bounding_ax_ : matplotlib Axes or None
        The Axes passed as ``ax`` whose area holds the grid, else None.

    See Also
    --------
    ClusterGalleryDisplay : The images nearest to each centroid.
    sklearn.neighbors.NearestNeighbors : Neighbour search in any metric.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.inspection import NearestNeighborsDisplay
    >>> X = load_digits().images[:64]
    >>> embedder = CueCoEmbedder(max_epochs=1, batch_size=32, hidden_dim=32,
    ...                          projection_dim=16, queue_size=64, n_clusters=3,
    ...                          cluster_warmup=0, random_state=0).fit(X)
    >>> display = NearestNeighborsDisplay.from_estimator(
    ...     embedder, X[:2], X, n_neighbors=3)
    >>> display.indices[:, 0]  # each query is in the reference set
    array([0, 1])
    >>> plt.show()
    """

    def __init__(self, query_images, neighbor_images, indices, similarities):
        self.query_images = query_images
        self.neighbor_images = neighbor_images
        self.indices = indices
        self.similarities = similarities

    def plot(self, ax=None, *, cmap="gray"):
        """Draw the queries and their neighbours.

        Parameters
        ----------
        ax : matplotlib Axes or array-like of Axes, default=None
            None draws on a new figure. One Axes: its area is divided into
            the grid of cells. An array: one Axes per cell, ``n_queries *
            (n_neighbors + 1)`` of them.
        cmap : str or matplotlib Colormap, default="gray"
            Colormap of grayscale images (ignored for RGB).

        Returns
        -------
        display : NearestNeighborsDisplay
            Object that stores the computed values and the matplotlib artists.
        """
        check_matplotlib_support(f"{type(self).__name__}.plot")
        similarities = np.asarray(self.similarities)
        n_rows, k = similarities.shape
        figsize = (_CELL_INCHES * (k + 1) + 0.2, (_CELL_INCHES + 0.25) * n_rows + 0.1)
        fig, axes, bounding_ax = _axes_grid(ax, n_rows, k + 1, figsize, type(self).__name__)
        ims = np.empty((n_rows, k + 1), dtype=object)
        for i in range(n_rows):
            ims[i, 0] = _show_image(axes[i, 0], np.asarray(self.query_images[i]), cmap)
            axes[i, 0].set_title("query", fontsize="small", fontweight="bold")
            for j in range(k):
                ims[i, j + 1] = _show_image(
                    axes[i, j + 1], np.asarray(self.neighbor_images[i][j]), cmap)
                axes[i, j + 1].set_title(f"{similarities[i, j]:.2f}", fontsize="small")
        self.figure_, self.axes_, self.ims_, self.bounding_ax_ = fig, axes, ims, bounding_ax
        return self

    @classmethod
    def from_estimator(cls, estimator, X_query, X_reference, *, n_neighbors=5, ax=None,
                       cmap="gray"):
        """Retrieve the reference images nearest to each query with an embedder.

        Both sets are embedded with ``transform``; reference images are
        ranked by cosine similarity. A query that is also in the reference
        set finds itself first, with similarity 1. Only the queries and the
        neighbours shown are decoded for display.

        Parameters
        ----------
        estimator : CueCoEmbedder or CueCoClassifier
            Fitted on images.
        X_query : array-like or ImageSource
            Query images, in a layout the estimator accepts (see
            :meth:`ClusterGalleryDisplay.from_estimator`).
        X_reference : array-like or ImageSource
            Images searched.
        n_neighbors : int, default=5
            Neighbours shown per query; at most the number of reference
            images.
        ax : matplotlib Axes or array-like of Axes, default=None
            See :meth:`plot`.
        cmap : str or matplotlib Colormap, default="gray"
            Colormap of grayscale images.

        Returns
        -------
        display : NearestNeighborsDisplay
        """
        caller = f"{cls.__name__}.from_estimator"
        check_matplotlib_support(caller)
        embedder = _fitted_embedder(estimator, caller)
        shape = _image_shape(embedder, caller)
        queries = _Images(X_query, shape, "X_query")
        references = _Images(X_reference, shape, "X_reference")
        _check_n_neighbors(n_neighbors, len(references))
        return cls._from_images(
            embedder.transform(queries.data), embedder.transform(references.data),
            queries, references, n_neighbors, ax, cmap,
        )

    @classmethod
    def from_embeddings(cls, query_embeddings, reference_embeddings, query_images,
                        reference_images, *, n_neighbors=5, ax=None, cmap="gray"):
        """Retrieve the reference images nearest to each query from embeddings.

        For embeddings computed once and reused, or from any other model.

        Parameters
        ----------
        query_embeddings : array-like of shape (n_queries, n_features)
            Embeddings of the queries.
        reference_embeddings : array-like of shape (n_references, n_features)
            Embeddings of the images searched.
        query_images : array-like or ImageSource
            The query images: an array of shape ``(n_queries, H, W)``,
            ``(n_queries, H, W, C)`` or ``(n_queries, C, H, W)``, or an
            :class:`~skcueco.ImageSource`.
        reference_images : array-like or ImageSource
            The reference images, in the same forms. Only the neighbours
            shown are decoded.
        n_neighbors : int, default=5
            Neighbours shown per query.
        ax : matplotlib Axes or array-like of Axes, default=None
            See :meth:`plot`.
        cmap : str or matplotlib Colormap, default="gray"
            Colormap of grayscale images.

        Returns
        -------
        display : NearestNeighborsDisplay
        """
        check_matplotlib_support(f"{cls.__name__}.from_embeddings")
        Q = _check_embeddings(query_embeddings, "query_embeddings")
        R = _check_embeddings(reference_embeddings, "reference_embeddings")
        if Q.shape[1] != R.shape[1]:
            raise ValueError(
                f"query_embeddings have {Q.shape[1]} features but reference_embeddings "
                f"have {R.shape[1]}."
            )
        queries = _Images(query_images, None, "query_images")
        references = _Images(reference_images, None, "reference_images")
        for name, Z, images in [("query", Q, queries), ("reference", R, references)]:
            if len(images) != len(Z):
                raise ValueError(
                    f"{name}_images holds {len(images)} images but {name}_embeddings "
                    f"has {len(Z)} rows."
                )
        _check_n_neighbors(n_neighbors, len(R))
        return cls._from_images(Q, R, queries, references, n_neighbors, ax, cmap)

    @classmethod
    def _from_images(cls, Q, R, queries, references, n_neighbors, ax, cmap):
        indices, similarities = _cosine_top_k(Q, R, n_neighbors)
        neighbors = references.take(indices)
        neighbors = neighbors.reshape(*indices.shape, *neighbors.shape[1:])
        query_images = queries.take(np.arange(len(queries)))
        display = cls(query_images, neighbors, indices, similarities)
        return display.plot(ax=ax, cmap=cmap)


def _check_n_neighbors(n_neighbors, n_references):
    n_neighbors = _check_int(n_neighbors, "n_neighbors", 1)
    if n_neighbors > n_references:
        raise ValueError(
            f"n_neighbors={n_neighbors} is larger than the number of reference images "
            f"({n_references})."
        )


# -- embedding map ----------------------------------------------------------------------
class EmbeddingMapDisplay:
    """A 2-D map of embeddings, coloured by cluster or by class.

    Each sample is a point; points of the same label share a colour from a
    categorical palette (tab10 up to 10 labels, tab20 up to 20, evenly
    spaced hues beyond), listed in the legend. Optionally small images
    (thumbnails) mark a subset of spread-out points, framed in their
    label's colour.

    Use :meth:`from_estimator` or :meth:`from_embeddings` to create one; the
    constructor takes data that is already computed.

    Parameters
    ----------
    coordinates : ndarray of shape (n_samples, 2)
        Positions of the points.
    labels : array-like of shape (n_samples,), default=None
        Label of each point (cluster index or class). None draws every
        point in one colour.
    thumbnails : ndarray of shape (n_thumbnails, height, width) or \
            (n_thumbnails, height, width, 3), default=None
        Images in [0, 1] drawn at the points ``thumbnail_indices``.
    thumbnail_indices : array-like of int of shape (n_thumbnails,), default=None
        Samples the thumbnails belong to.
    label_name : str, default=None
        Title of the legend, e.g. ``"cluster"`` or ``"class"``.
    axis_labels : tuple of (str, str), default=None
        Labels of the x and y axes.

    Attributes
    ----------
    figure_ : matplotlib Figure
        Figure holding the map.
    ax_ : matplotlib Axes
        Axes holding the map.
    scatter_ : matplotlib PathCollection
        The points; ``scatter_.get_facecolors()[i]`` is the colour of
        sample ``i``.
    colors_ : dict
        RGBA colour of each label (empty when ``labels`` is None).
    legend_ : matplotlib Legend or None
        One entry per label.
    thumbnails_ : list of matplotlib AnnotationBbox
        The thumbnails drawn.

    See Also
    --------
    ClusterGalleryDisplay : The images nearest to each centroid.
    sklearn.decomposition.PCA : The default 2-D projection.
    sklearn.manifold.TSNE : The non-linear alternative.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.inspection import EmbeddingMapDisplay
    >>> X, y = load_digits(return_X_y=True)
    >>> X, y = X[:64], y[:64]
    >>> embedder = CueCoEmbedder(max_epochs=1, batch_size=32, hidden_dim=32,
    ...                          projection_dim=16, queue_size=64, n_clusters=3,
    ...                          cluster_warmup=0, random_state=0).fit(X)
    >>> display = EmbeddingMapDisplay.from_estimator(embedder, X, y=y, thumbnails=10)
    >>> display.coordinates.shape, len(display.thumbnails_)
    ((64, 2), 10)
    >>> plt.show()
    """

    def __init__(self, coordinates, labels=None, *, thumbnails=None, thumbnail_indices=None,
                 label_name=None, axis_labels=None):
        self.coordinates = coordinates
        self.labels = labels
        self.thumbnails = thumbnails
        self.thumbnail_indices = thumbnail_indices
        self.label_name = label_name
        self.axis_labels = axis_labels

    def plot(self, ax=None, *, legend=True, cmap="gray", thumbnail_zoom=None,
             scatter_kwargs=None):
        """Draw the map.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; None draws on a new figure.
        legend : bool, default=True
            Whether to add a legend of the labels.
        cmap : str or matplotlib Colormap, default="gray"
            Colormap of grayscale thumbnails.
        thumbnail_zoom : float, default=None
            Scale of the thumbnails; None shows them about 32 pixels wide.
        scatter_kwargs : dict, default=None
            Extra keyword arguments of ``ax.scatter`` (e.g. ``s``, ``alpha``).

        Returns
        -------
        display : EmbeddingMapDisplay
            Object that stores the computed values and the matplotlib artists.
        """
        check_matplotlib_support(f"{type(self).__name__}.plot")
        import matplotlib.pyplot as plt
        from matplotlib.colors import Normalize
        from matplotlib.lines import Line2D
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        xy = np.asarray(self.coordinates, dtype=np.float64)
        if ax is None:
            fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
        fig = ax.figure

        if self.labels is None:
            colors = np.tile(_palette(1), (len(xy), 1))
            self.colors_ = {}
        else:
            classes, codes = np.unique(np.asarray(self.labels), return_inverse=True)
            palette = _palette(len(classes))
            colors = palette[codes.ravel()]
            self.colors_ = {label: tuple(palette[i]) for i, label in enumerate(classes.tolist())}
        kwargs = {"s": float(np.clip(4000 / len(xy), 6, 40)), "linewidths": 0}
        kwargs.update(scatter_kwargs or {})
        self.scatter_ = ax.scatter(xy[:, 0], xy[:, 1], c=colors, **kwargs)

        self.legend_ = None
        if legend and self.colors_:
            handles = [
                Line2D([], [], linestyle="", marker="o", markersize=7, color=color,
                       label=str(label))
                for label, color in self.colors_.items()
            ]
            self.legend_ = ax.legend(
                handles=handles, title=self.label_name, loc="center left",
                bbox_to_anchor=(1.02, 0.5), ncols=1 + (len(handles) - 1) // 20,
                fontsize="small", frameon=False,
            )

        self.thumbnails_ = []
        if self.thumbnails is not None and len(self.thumbnails):
            thumbnails = np.asarray(self.thumbnails)
            zoom = thumbnail_zoom or _THUMBNAIL_PIXELS / max(thumbnails.shape[1:3])
            for image, i in zip(thumbnails, np.asarray(self.thumbnail_indices), strict=True):
                box = OffsetImage(image, zoom=zoom, cmap=cmap, norm=Normalize(0.0, 1.0),
                                  interpolation="nearest")
                artist = AnnotationBbox(box, xy[i], frameon=True, pad=0.1, zorder=3,
                                        bboxprops={"edgecolor": colors[i], "linewidth": 1.5})
                ax.add_artist(artist)
                self.thumbnails_.append(artist)

        x_label, y_label = self.axis_labels or ("dimension 1", "dimension 2")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        self.figure_, self.ax_ = fig, ax
        return self

    @classmethod
    def from_estimator(cls, estimator, X, *, y=None, method="pca", thumbnails=False,
                       random_state=None, ax=None, legend=True):
        """Map the embeddings of ``X`` by a fitted embedder in 2-D.

        Parameters
        ----------
        estimator : CueCoEmbedder or CueCoClassifier
            Fitted; on images when ``thumbnails`` are asked for.
        X : array-like or ImageSource
            Data in a layout the estimator accepts.
        y : array-like of shape (n_samples,), default=None
            Labels to colour by (e.g. true classes). None colours by cluster,
            ``estimator.predict(X)`` for an embedder.
        method : {"pca", "tsne"} or estimator, default="pca"
            How the embeddings are brought to 2-D: PCA, t-SNE
            (:class:`sklearn.manifold.TSNE`, PCA initialisation, perplexity
            30 or less for small sets), or any estimator whose
            ``fit_transform`` returns two columns (it is cloned first).
        thumbnails : bool or int, default=False
            Number of images drawn on the map, at spread-out points; True
            means 30. Only those images are decoded for display.
        random_state : int, RandomState instance or None, default=None
            Seeds PCA's randomised solver and t-SNE.
        ax : matplotlib Axes, default=None
            Axes to draw on; None draws on a new figure.
        legend : bool, default=True
            Whether to add a legend of the labels.

        Returns
        -------
        display : EmbeddingMapDisplay
        """
        caller = f"{cls.__name__}.from_estimator"
        check_matplotlib_support(caller)
        estimator_embedder = _fitted_embedder(estimator, caller)
        n_thumbnails = _check_thumbnails(thumbnails)
        images = None
        data = X
        if n_thumbnails:
            images = _Images(X, _image_shape(estimator_embedder, caller))
            data = images.data
        Z = estimator_embedder.transform(data)
        if y is None:
            labels, label_name = estimator_embedder.predict(data), "cluster"
        else:
            labels, label_name = _check_labels(y, len(Z), "y"), "class"
        return cls._from_data(Z, labels, label_name, images, n_thumbnails, method,
                              random_state, ax, legend)

    @classmethod
    def from_embeddings(cls, embeddings, *, labels=None, images=None, method="pca",
                        thumbnails=False, random_state=None, ax=None, legend=True):
        """Map given embeddings in 2-D.

        Parameters
        ----------
        embeddings : array-like of shape (n_samples, n_features)
            Embeddings, e.g. from ``transform``.
        labels : array-like of shape (n_samples,), default=None
            Labels to colour by. None draws every point in one colour.
        images : array-like or ImageSource, default=None
            The images of the samples, needed for ``thumbnails``: an array
            of shape ``(n_samples, H, W)``, ``(n_samples, H, W, C)`` or
            ``(n_samples, C, H, W)``, or an :class:`~skcueco.ImageSource`.
        method : {"pca", "tsne"} or estimator, default="pca"
            See :meth:`from_estimator`.
        thumbnails : bool or int, default=False
            Number of images drawn on the map; True means 30.
        random_state : int, RandomState instance or None, default=None
            Seeds PCA's randomised solver and t-SNE.
        ax : matplotlib Axes, default=None
            Axes to draw on; None draws on a new figure.
        legend : bool, default=True
            Whether to add a legend of the labels.

        Returns
        -------
        display : EmbeddingMapDisplay
        """
        check_matplotlib_support(f"{cls.__name__}.from_embeddings")
        Z = _check_embeddings(embeddings, "embeddings")
        if labels is not None:
            labels = _check_labels(labels, len(Z), "labels")
        n_thumbnails = _check_thumbnails(thumbnails)
        if n_thumbnails and images is None:
            raise ValueError("thumbnails need the images: pass images=...")
        if images is not None:
            images = _Images(images, None, "images")
            if len(images) != len(Z):
                raise ValueError(
                    f"images holds {len(images)} images but embeddings has {len(Z)} rows."
                )
        return cls._from_data(Z, labels, None, images, n_thumbnails, method, random_state,
                              ax, legend)

    @classmethod
    def _from_data(cls, Z, labels, label_name, images, n_thumbnails, method, random_state,
                   ax, legend):
        coordinates, axis_labels = _reduce_to_2d(Z, method, random_state)
        indices = _spread_out(coordinates, min(n_thumbnails, len(coordinates)))
        thumbnails = images.take(indices) if images is not None and len(indices) else None
        display = cls(coordinates, labels, thumbnails=thumbnails,
                      thumbnail_indices=indices if thumbnails is not None else None,
                      label_name=label_name, axis_labels=axis_labels)
        return display.plot(ax=ax, legend=legend)


def _check_labels(labels, n_samples, name):
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_samples:
        raise ValueError(
            f"{name} must have shape ({n_samples},), one label per sample; got shape "
            f"{labels.shape}."
        )
    return labels


def _check_thumbnails(thumbnails):
    if isinstance(thumbnails, (bool, np.bool_)):
        return _DEFAULT_N_THUMBNAILS if thumbnails else 0
    return _check_int(thumbnails, "thumbnails", 0)


def _reduce_to_2d(Z, method, random_state):
    """``(coordinates (n, 2), axis labels)`` of embeddings ``Z``."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if len(Z) < 2:
        raise ValueError(f"A map needs at least 2 samples, got {len(Z)}.")
    if isinstance(method, str):
        if method == "pca":
            pca = PCA(n_components=2, random_state=random_state)
            coordinates = pca.fit_transform(Z)
            return coordinates, tuple(
                f"PCA {i + 1} ({ratio:.0%} of the variance)"
                for i, ratio in enumerate(pca.explained_variance_ratio_)
            )
        if method == "tsne":
            perplexity = min(30.0, max(1.0, (len(Z) - 1) / 3))
            tsne = TSNE(n_components=2, init="pca", perplexity=perplexity,
                        random_state=random_state)
            return tsne.fit_transform(Z), ("t-SNE 1", "t-SNE 2")
        raise ValueError(f"method must be 'pca', 'tsne' or an estimator, got {method!r}.")
    if not hasattr(method, "fit_transform"):
        raise TypeError(
            "method must be 'pca', 'tsne' or an estimator with fit_transform, got "
            f"{type(method).__name__}."
        )
    coordinates = np.asarray(clone(method).fit_transform(Z))
    if coordinates.shape != (len(Z), 2):
        raise ValueError(
            f"method {type(method).__name__} returned shape {coordinates.shape}; "
            f"a map needs ({len(Z)}, 2)."
        )
    name = type(method).__name__
    return coordinates, (f"{name} 1", f"{name} 2")


def _spread_out(coordinates, n):
    """``n`` indices of points that cover the map: greedy farthest-point sampling."""
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    span = np.ptp(coordinates, axis=0)
    points = (coordinates - coordinates.min(axis=0)) / np.where(span > 0, span, 1.0)
    first = int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    chosen = [first]
    distance = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < n:
        nxt = int(np.argmax(distance))
        if distance[nxt] == 0:  # only duplicates of chosen points are left
            break
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen, dtype=np.intp)


# -- training history -----------------------------------------------------------------
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
        caller = f"{cls.__name__}.from_estimator"
        check_matplotlib_support(caller)
        embedder = _fitted_embedder(estimator, caller)
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

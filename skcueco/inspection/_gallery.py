"""ClusterGalleryDisplay: the images nearest to each learned centroid."""

import numpy as np
import torch
from sklearn.utils._optional_dependencies import check_matplotlib_support

from ._common import (
    _CELL_INCHES,
    _check_int,
    _from_estimator_embedder,
    _image_shape,
    _Images,
    _plot_image_grid,
)


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
        axes = _plot_image_grid(
            self, ax, (n_rows, n_cols),
            lambda i, j: images[i, j] if indices[i, j] >= 0 else None, figsize, cmap,
        )
        for i in range(n_rows):
            size = int(sizes[i])
            axes[i, 0].set_ylabel(
                f"cluster {clusters[i]}\n{size} image{'s' if size != 1 else ''}",
                rotation=0, ha="right", va="center", fontsize="small",
            )
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
        caller, embedder = _from_estimator_embedder(cls, estimator)
        n_images = _check_int(n_images, "n_images", 1)
        images = _Images(X, _image_shape(embedder, caller))
        centers = embedder.cluster_centers_
        clusters = _check_clusters(clusters, len(centers))

        trained = embedder._trained
        projections = trained.project(*embedder._rows(images.data))
        # the assignment exactly as `predict` computes it; the ranking in float64
        assigned = trained.assign(torch.from_numpy(projections)).numpy()
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

"""NearestNeighborsDisplay: image retrieval by cosine similarity of embeddings."""

import numpy as np
from sklearn.utils._optional_dependencies import check_matplotlib_support

from ._common import (
    _CELL_INCHES,
    _check_embeddings,
    _check_int,
    _from_estimator_embedder,
    _image_shape,
    _Images,
    _plot_image_grid,
)


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
        axes = _plot_image_grid(
            self, ax, (n_rows, k + 1),
            lambda i, j: self.query_images[i] if j == 0 else self.neighbor_images[i][j - 1],
            figsize, cmap,
        )
        for i in range(n_rows):
            axes[i, 0].set_title("query", fontsize="small", fontweight="bold")
            for j in range(k):
                axes[i, j + 1].set_title(f"{similarities[i, j]:.2f}", fontsize="small")
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
        caller, embedder = _from_estimator_embedder(cls, estimator)
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

"""EmbeddingMapDisplay: a 2-D map of embeddings, coloured by cluster or by class."""

import numpy as np
from sklearn.base import clone
from sklearn.utils._optional_dependencies import check_matplotlib_support

from ._common import (
    _check_embeddings,
    _check_int,
    _from_estimator_embedder,
    _image_shape,
    _Images,
)

# on-screen size, in pixels, of the longer side of a thumbnail on a map
_THUMBNAIL_PIXELS = 32
# thumbnails drawn on a map when `thumbnails=True`
_DEFAULT_N_THUMBNAILS = 30


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
        caller, estimator_embedder = _from_estimator_embedder(cls, estimator)
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


def _palette(n):
    """``n`` distinct RGBA colours: tab10, tab20, then evenly spaced hues."""
    import matplotlib as mpl
    from matplotlib.colors import to_rgba_array

    if n <= 10:
        return to_rgba_array(mpl.colormaps["tab10"].colors[:n])
    if n <= 20:
        return to_rgba_array(mpl.colormaps["tab20"].colors[:n])
    return mpl.colormaps["hsv"](np.linspace(0.0, 1.0, n, endpoint=False))

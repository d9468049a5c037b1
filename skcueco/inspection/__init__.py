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

from ._gallery import ClusterGalleryDisplay
from ._history import TrainingHistoryDisplay
from ._map import EmbeddingMapDisplay
from ._neighbors import NearestNeighborsDisplay

__all__ = [
    "ClusterGalleryDisplay",
    "EmbeddingMapDisplay",
    "NearestNeighborsDisplay",
    "TrainingHistoryDisplay",
]

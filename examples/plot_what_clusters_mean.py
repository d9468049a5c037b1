"""
=================================
What the learned clusters mean
=================================

A :class:`~skcueco.CueCoEmbedder` learns centroids along with the
embeddings; at the end of ``fit`` it reads the clusters from the graph of
the training images' nearest neighbours, and ``predict`` gives an image
the cluster its nearest training images vote for (``cluster_centers_``
holds each cluster's mean direction).
Training uses no labels, so the cluster indices carry no names: this
example looks at the clusters learned on scikit-learn's 8x8 handwritten
digits with the displays of :mod:`skcueco.inspection`:

- :class:`~skcueco.inspection.TrainingHistoryDisplay` shows the training
  curves, where the clustering term switches on after the warm-up;
- :class:`~skcueco.inspection.ClusterGalleryDisplay` shows, for each
  cluster, the images nearest to its centroid;
- :class:`~skcueco.inspection.EmbeddingMapDisplay` places the held-out
  images on a 2-D map, coloured by cluster and by the true digit.

"""

# %%
# Train CueCo on the digits, without labels
# -----------------------------------------
#
# ``load_digits().images`` holds 1,797 grayscale images of shape ``(8, 8)``
# with values from 0 to 16; ``CueCoEmbedder`` reads such an ``(N, H, W)``
# array as it is. A quarter of the images is held out for the map. The
# labels are only used below to name the clusters, never by CueCo.
#
# The ten centroids are initialised by spherical k-means after 4 warm-up
# epochs; from then on the clustering term pulls each image towards its
# centroid. A narrow projection head and 10 epochs keep the run short;
# ``random_state`` makes it repeatable.

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import train_test_split

from skcueco import CueCoEmbedder
from skcueco.inspection import (
    ClusterGalleryDisplay,
    EmbeddingMapDisplay,
    TrainingHistoryDisplay,
)

digits = load_digits()
X_train, X_test, y_train, y_test = train_test_split(
    digits.images, digits.target, test_size=0.25, random_state=0,
    stratify=digits.target,
)
embedder = CueCoEmbedder(max_epochs=10, hidden_dim=256, n_clusters=10,
                         cluster_warmup=4, random_state=0)
embedder.fit(X_train)

# %%
# The training curves
# -------------------
#
# ``history_`` holds one row per epoch. The top panel shows the total loss
# and its two terms: the clustering term is 0 during the warm-up and the
# total loss steps up when it switches on (the cluster weight, third panel,
# goes from 0 to 1). The learning rate decays along a cosine after a short
# linear warm-up (10 % of the epochs, here within the first one).

TrainingHistoryDisplay.from_estimator(embedder)

# %%
# The images nearest to each centroid
# -----------------------------------
#
# Each row of the gallery is one cluster: among the training images that
# ``predict`` assigns to it, the ten whose projections are most similar to
# its centroid (cosine similarity in the projection space where the
# centroids live), most similar first. The row label gives the number of
# images in the cluster. These typical members say what the cluster stands
# for, without any label.

gallery = ClusterGalleryDisplay.from_estimator(embedder, X_train, n_images=10)

# %%
# Naming the clusters with the labels
# -----------------------------------
#
# The labels were not used for training, but they can check what the
# gallery suggests. The table counts the true digits in each cluster; its
# ``purity`` column is the share of the most common digit. Clusters rarely
# match the digits one to one after so short a run: several digits can share
# a cluster, and a digit written in two styles can split in two.

clusters = embedder.predict(X_train)
table = pd.crosstab(pd.Series(clusters, name="cluster"), pd.Series(y_train, name="digit"))
summary = pd.DataFrame({
    "size": table.sum(axis=1),
    "main digit": table.idxmax(axis=1),
    "purity": (table.max(axis=1) / table.sum(axis=1)).round(2),
})
print(summary.to_string())
print(f"Adjusted Rand index against the digits: {adjusted_rand_score(y_train, clusters):.2f}")

# %%
# ``clusters`` picks the rows to show: here the three least pure clusters,
# with more images each. A cluster that mixes digits may show it among its
# nearest images already; otherwise its other digits lie further from the
# centroid than the images shown.

mixed = summary["purity"].sort_values().index[:3].to_numpy()
ClusterGalleryDisplay.from_estimator(embedder, X_train, n_images=16, clusters=mixed)

# %%
# A map of the held-out images
# ----------------------------
#
# t-SNE places the embeddings of the held-out images in the plane so that
# neighbours stay neighbours. On the left the points are coloured by their
# predicted cluster, and ``thumbnails`` draws some images at spread-out
# points, framed in their cluster's colour. On the right the same points
# (the display's ``coordinates`` passed to a new
# :class:`~skcueco.inspection.EmbeddingMapDisplay`) are coloured by their
# true digit. A group of one colour on the right that takes two colours on
# the left is a digit split between two clusters; a group of one colour on
# the left that takes several on the right is a cluster mixing digits.

fig, (ax_clusters, ax_digits) = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
by_cluster = EmbeddingMapDisplay.from_estimator(
    embedder, X_test, method="tsne", random_state=0, thumbnails=15, ax=ax_clusters)
ax_clusters.set_title("held-out images, coloured by predicted cluster")
EmbeddingMapDisplay(by_cluster.coordinates, y_test, label_name="digit",
                    axis_labels=by_cluster.axis_labels).plot(ax=ax_digits)
ax_digits.set_title("the same map, coloured by true digit")

sizes = np.bincount(embedder.predict(X_test), minlength=embedder.n_clusters)
print(f"Held-out images per cluster: {sizes.tolist()}")

plt.show()

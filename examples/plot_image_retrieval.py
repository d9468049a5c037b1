"""
=====================================
Image retrieval with CueCo embeddings
=====================================

Embeddings learned without labels can search a collection of images: the
images most similar to a query are those whose embeddings have the highest
cosine similarity to the query's. This example trains a
:class:`~skcueco.CueCoEmbedder` on scikit-learn's 8x8 handwritten digits and
uses :class:`~skcueco.inspection.NearestNeighborsDisplay` to see what it
retrieves for held-out queries, where it fails, and how it compares with a
search on raw pixels. A :class:`~skcueco.callbacks.KNNMonitor` tracks the
retrieval quality during training, which
:class:`~skcueco.inspection.TrainingHistoryDisplay` plots next to the loss.

"""

# %%
# Train CueCo, monitoring a kNN classifier
# ----------------------------------------
#
# The training images are the collection searched; the held-out images are
# the queries. ``fit`` sees no labels. The monitor, however, uses the labels
# of both sets to measure after every third epoch how often a query's
# nearest training images (``k=20``, cosine similarity, weighted vote) have
# its digit: a number that follows the quality of the retrieval. It only
# watches, it does not change the training.

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

from skcueco import CueCoEmbedder
from skcueco.callbacks import KNNMonitor
from skcueco.inspection import NearestNeighborsDisplay, TrainingHistoryDisplay

digits = load_digits()
X_train, X_test, y_train, y_test = train_test_split(
    digits.images, digits.target, test_size=0.25, random_state=0,
    stratify=digits.target,
)
monitor = KNNMonitor(X_train, y_train, X_test, y_test, every=3, k=20)
embedder = CueCoEmbedder(max_epochs=10, hidden_dim=256, cluster_warmup=4,
                         callbacks=[monitor], random_state=0)
embedder.fit(X_train)

# %%
# The panels show the loss terms, the learning rate, the weight of the
# clustering term and, at the bottom, the kNN accuracy on the epochs the
# monitor ran (every third one and the last).

TrainingHistoryDisplay.from_estimator(embedder)
print(embedder.history_[["epoch", "loss", "knn_accuracy"]].dropna().round(3).to_string(index=False))

# %%
# Search the training images
# --------------------------
#
# One held-out query per digit. Each row shows the query, then the eight
# training images whose embeddings are most similar to it, most similar
# first, titled with their cosine similarity.

queries = np.array([np.flatnonzero(y_test == digit)[0] for digit in range(10)])
NearestNeighborsDisplay.from_estimator(embedder, X_test[queries], X_train, n_neighbors=8)

# %%
# How often the neighbours have the query's digit
# -----------------------------------------------
#
# The precision at 10 is the share of the 10 retrieved images that show the
# query's digit, averaged over all held-out queries. The same search on the
# 64 raw pixel values (cosine similarity too) is the baseline: digits are
# small and centred, so pixels alone already retrieve well, and the learned
# embeddings have to be compared with that, not with chance (0.10).


def retrieved(Z_query, Z_reference, k=10):
    """Indices of the k most similar references of each query, by cosine similarity."""
    search = NearestNeighbors(n_neighbors=k, metric="cosine").fit(Z_reference)
    return search.kneighbors(Z_query, return_distance=False)


pixels_train = X_train.reshape(len(X_train), -1)
pixels_test = X_test.reshape(len(X_test), -1)
found = {
    "CueCo": retrieved(embedder.transform(X_test), embedder.transform(X_train)),
    "raw pixels": retrieved(pixels_test, pixels_train),
}
for name, neighbours in found.items():
    precision = (y_train[neighbours] == y_test[:, np.newaxis]).mean()
    print(f"Precision at 10, {name}: {precision:.3f}")

# %%
# The same queries searched on raw pixels, with
# :meth:`~skcueco.inspection.NearestNeighborsDisplay.from_embeddings`, which
# takes any embeddings (here the pixels themselves) with the images to show.
# Pixels match images that overlap stroke for stroke; the learned embeddings
# were trained to ignore small shifts, rotations and changes of contrast.

NearestNeighborsDisplay.from_embeddings(pixels_test[queries], pixels_train,
                                        X_test[queries], X_train, n_neighbors=8)

# %%
# Where the search fails
# ----------------------
#
# The held-out queries whose most similar training image shows another
# digit. Looking at them tells whether the errors are ambiguous writing or
# a weakness of the embedding.

failures = np.flatnonzero(y_train[found["CueCo"][:, 0]] != y_test)
print(f"{len(failures)} of {len(y_test)} queries have another digit as nearest image")
NearestNeighborsDisplay.from_estimator(embedder, X_test[failures[:5]], X_train,
                                       n_neighbors=8)

plt.show()

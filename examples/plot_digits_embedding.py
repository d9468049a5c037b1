"""
=========================================
Embedding handwritten digits with CueCo
=========================================

This example trains a :class:`~skcueco.CueCoEmbedder` on scikit-learn's 8x8
handwritten digits **without their labels**, then asks how useful the learned
embeddings are:

- a linear probe (logistic regression trained on a labelled split, scored on
  held-out images) on CueCo embeddings against the same probe on raw pixels;
- the training curves stored in ``history_``, with the contrastive and the
  clustering terms of the loss;
- how well the clusters learned during training recover the ten digits
  (adjusted Rand index of ``predict``);
- a 2-D t-SNE map of the held-out embeddings, coloured by the true digit
  and by the predicted cluster.

"""

# %%
# Setup
# -----

import math
import time

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap
from matplotlib.ticker import MaxNLocator
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skcueco import CueCoEmbedder

# %%
# Load the digits
# ---------------
#
# ``load_digits().images`` holds 1,797 grayscale images of shape ``(8, 8)``
# with values from 0 to 16. ``CueCoEmbedder`` takes such an ``(N, H, W)``
# array as it is: values outside [0, 1] are rescaled with the range seen in
# ``fit`` (here a division by 16). A quarter of the images is held out; the
# labels are only used by the probe and for scoring, never by CueCo.

digits = load_digits()
X_train, X_test, y_train, y_test = train_test_split(
    digits.images, digits.target, test_size=0.25, random_state=0,
    stratify=digits.target,
)
print(f"{len(X_train)} training and {len(X_test)} held-out images "
      f"of shape {X_train.shape[1:]}")

# %%
# Train CueCo without labels
# --------------------------
#
# ``fit`` gets the images only. Each step compares two random views of every
# image (a mild crop, a small rotation and shift, brightness and contrast
# changes, a little noise; no flip, since a mirrored digit is another
# symbol). The loss is a symmetric InfoNCE term that spreads images apart,
# plus, after ``cluster_warmup`` epochs, a clustering term that pulls each
# image towards the centroid its other view is assigned to. For images this
# small ``backbone="auto"`` picks a small CNN. A narrower projection head
# (``hidden_dim=512``) and 20 epochs keep the run short. ``random_state``
# makes the run repeatable: on the CPU the same seed gives bitwise-identical
# embeddings. ``device="auto"`` (the default) trains on a GPU when there is
# one.

embedder = CueCoEmbedder(max_epochs=20, hidden_dim=512, cluster_warmup=5, random_state=0)
start = time.perf_counter()
embedder.fit(X_train)
print(f"Trained {embedder.n_iter_} epochs in {time.perf_counter() - start:.1f} s "
      f"on {embedder.device_} ({type(embedder.encoder_).__name__} backbone)")

# %%
# The training curves
# -------------------
#
# ``history_`` is a :class:`pandas.DataFrame` with one row per epoch. The
# total ``loss`` is ``contrastive + cluster_weight * clustering``. The
# learning rate warms up linearly over the first epochs (10 % of
# ``max_epochs``, here 2) and then decays along a cosine to 0.

history = embedder.history_
print(history[["epoch", "loss", "contrastive", "clustering", "cluster_weight"]]
      .round(4).to_string(index=False))

# %%
# The two terms live on different scales, so each gets its own axis. The
# contrastive term is compared with its chance level: a query that is as
# similar to its positive key as to every key of the queue scores
# :math:`\log(1 + K_q)`, with :math:`K_q` the queue size, ``queue_size_``
# (by default a quarter of the training images, here 336).
#
# The contrastive loss *rises* after the first epoch. That is not a training
# failure: the queue starts out filled with random unit vectors, which are
# easy negatives (nearly orthogonal to every query), so the very first step
# scores far below chance. One step pushes 2 x 256 keys of real digits into
# the queue, which then resemble the queries far more: the task gets harder,
# and the loss of every later step of the first epoch is close to chance.
# The first epoch's mean is pulled down by that one easy step; from the
# second epoch on, the loss falls as the network learns.
#
# When the warm-up ends (dashed line) the centroids are initialised by
# spherical k-means on the key features of the training set and the
# clustering term is switched on, its weight rising over a few epochs
# (``cluster_ramp``). It starts high, because the features were not trained
# to form clusters, and drops within a few epochs.

queue_size = embedder.queue_size_  # the queue size used ("auto" by default)
warmup_end = embedder.cluster_warmup_ + 0.5
fig, (ax_con, ax_clu) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
ax_con.plot(history["epoch"], history["loss"], marker="o", label="total loss")
ax_con.plot(history["epoch"], history["contrastive"], marker="s", label="contrastive")
ax_con.axhline(math.log(1 + queue_size), color="black", linestyle=":",
               label=f"chance, log(1 + {queue_size})")
ax_con.set_ylabel("mean over the epoch")
ax_con.set_title("Contrastive term (InfoNCE against the queue)")
clustering = history[history["cluster_weight"] > 0]
ax_clu.plot(clustering["epoch"], clustering["clustering"], marker="o", color="tab:green",
            label="clustering")
ax_clu.set_ylim(0, None)  # a squared distance between unit vectors: 0 is a perfect fit
ax_clu.set_xlim(ax_con.get_xlim())
ax_clu.set_ylabel("mean squared distance to the centroid")
ax_clu.set_title("Clustering term (on after the warm-up)")
for ax in (ax_con, ax_clu):
    ax.axvline(warmup_end, color="grey", linestyle="--", label="end of warm-up")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.legend()
plt.show()

# %%
# Linear probe: CueCo embeddings against raw pixels
# -------------------------------------------------
#
# ``transform`` returns the standardised backbone features of the trained
# network and its unit projections, side by side (128 + 128 values per
# image for the small CNN; ``embedding_space`` picks either alone). A
# standardised logistic regression
# is trained on the embeddings of the training images with their labels and
# scored on the held-out images. The same probe on the 64 raw pixel values is
# the baseline that the embeddings should beat.


def probe_accuracy(Z_train, Z_test):
    """Held-out accuracy of a logistic regression on the given features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return probe.fit(Z_train, y_train).score(Z_test, y_test)


Z_train, Z_test = embedder.transform(X_train), embedder.transform(X_test)
cueco_accuracy = probe_accuracy(Z_train, Z_test)
raw_accuracy = probe_accuracy(X_train.reshape(len(X_train), -1),
                              X_test.reshape(len(X_test), -1))
print(f"CueCo probe accuracy: {cueco_accuracy:.4f}")
print(f"Raw pixels probe accuracy: {raw_accuracy:.4f}")

# %%
# Clusters found during training
# ------------------------------
#
# The clusters are a by-product of training. At the end of ``fit`` the
# neighbourhood graph of the training images is cut into ``n_clusters``
# clusters (10 by default), and ``predict`` gives each image the cluster its
# most similar training images vote for; the cluster indices are arbitrary, so they are compared with the true digits by the adjusted
# Rand index (1 is a perfect match up to renaming, 0 is chance).

clusters = embedder.predict(X_test)
ari = adjusted_rand_score(y_test, clusters)
print(f"Adjusted Rand index: {ari:.4f}")

# %%
# A 2-D map of the embeddings
# ---------------------------
#
# t-SNE places the held-out images in the plane so that neighbours in the
# embedding stay neighbours. On the left each point is coloured by its true
# digit, which CueCo never saw; on the right by its predicted cluster, with
# arbitrary cluster indices. Classes that the clusters merge or split show up
# as a change of colour between the two panels.

xy = TSNE(n_components=2, init="pca", random_state=0).fit_transform(Z_test)

# two different palettes, so that a colour never suggests that a cluster
# index and a digit are the same thing
digit_colours = plt.get_cmap("tab10")
cluster_colours = ListedColormap(plt.get_cmap("tab20b").colors[::2], name="clusters")

fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), layout="constrained")
for ax, (title, colours, cmap, n) in zip(axes, [
    ("true digit", y_test, digit_colours, 10),
    ("predicted cluster (arbitrary index)", clusters, cluster_colours, embedder.n_clusters),
]):
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap=cmap,
                        vmin=-0.5, vmax=n - 0.5, s=8)
    ax.set_title(f"t-SNE of held-out CueCo embeddings,\ncoloured by {title}")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(points, ax=ax, ticks=range(n), label=title)
plt.show()

# %%
# Going further
# -------------
#
# - ``python -m skcueco`` runs the same comparison on the same split for 40
#   epochs (``--epochs`` changes it) and adds the untrained network as a
#   third baseline.
# - ``cluster_weight=0`` turns the clustering term off, which is exactly
#   symmetric MoCo v2, the method CueCo extends.
# - ``n_clusters`` sets the number of clusters that ``predict`` gives;
#   about the number of classes, or more.

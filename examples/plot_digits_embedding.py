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
- how well the centroids learned during training recover the ten digits
  (adjusted Rand index of ``predict``);
- a 2-D t-SNE map of the held-out embeddings, coloured by the true digit
  and by the predicted cluster.

It runs in under a minute on two CPU cores. Figures are written as PNG
files to the directory named by the ``SKCUECO_EXAMPLES_OUT`` environment
variable, or to the current directory.
"""

# %%
# Setup
# -----
#
# The example writes its figures to files, so it uses matplotlib's
# non-interactive Agg backend and works without a display.

import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skcueco import CueCoEmbedder

out_dir = Path(os.environ.get("SKCUECO_EXAMPLES_OUT", "."))
out_dir.mkdir(parents=True, exist_ok=True)

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
# total ``loss`` is ``contrastive + cluster_weight * clustering``. During the
# warm-up the clustering term is off (0); when it ends, the centroids are
# initialised by spherical k-means on the key features of the training set
# and the clustering term is switched on, so the total loss steps up at
# that point. The learning rate warms up linearly over the first epochs (10 %
# of ``max_epochs``, here 2) and then decays along a cosine to 0.

history = embedder.history_
print(history[["epoch", "loss", "contrastive", "clustering", "cluster_weight"]]
      .round(4).to_string(index=False))

fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
for column in ("loss", "contrastive", "clustering"):
    ax.plot(history["epoch"], history[column], marker="o", label=column)
ax.axvline(embedder.cluster_warmup + 0.5, color="grey", linestyle="--",
           label="end of warm-up")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.set_xlabel("epoch")
ax.set_ylabel("mean loss over the epoch")
ax.set_title("CueCo training on digits")
ax.legend()
fig.savefig(out_dir / "digits_loss_curve.png", dpi=100)

# %%
# Linear probe: CueCo embeddings against raw pixels
# -------------------------------------------------
#
# ``transform`` returns the backbone features of the trained network (128
# values per image for the small CNN). A standardised logistic regression
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
# The centroids are a by-product of training. ``predict`` assigns each image
# to its nearest centroid (10 by default, ``n_clusters``); the cluster indices
# are arbitrary, so they are compared with the true digits by the adjusted
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

fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), layout="constrained")
for ax, (title, colours) in zip(axes, [
    ("true digit", y_test),
    ("predicted cluster", clusters),
]):
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="tab10",
                        vmin=-0.5, vmax=9.5, s=8)
    ax.set_title(f"t-SNE of held-out CueCo embeddings,\ncoloured by {title}")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(points, ax=ax, ticks=range(10), label=title)
fig.savefig(out_dir / "digits_embedding_tsne.png", dpi=100)

# %%
# Going further
# -------------
#
# - ``python -m skcueco`` runs the same comparison on the same split for 40
#   epochs (``--epochs`` changes it) and adds the untrained network as a
#   third baseline.
# - ``cluster_weight=0`` turns the clustering term off, which is exactly
#   symmetric MoCo v2, the method CueCo extends.
# - ``n_clusters`` sets the number of centroids that ``predict`` chooses
#   from; about the number of classes, or more.

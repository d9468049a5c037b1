"""
==========================================================
Classifying digits with few labels after CueCo pretraining
==========================================================

Self-supervised pretraining pays off when images are plentiful and labels are
scarce. This example trains a :class:`~skcueco.CueCoEmbedder` once on all the
training images of scikit-learn's 8x8 digits **without their labels**, then
fits the head of a :class:`~skcueco.CueCoClassifier` on 1 %, 5 %, 10 % and
100 % of the labels, and compares its held-out accuracy with two baselines
that see the same labels:

- a logistic regression on the raw pixels (supervised: labeled images only);
- :class:`~sklearn.semi_supervised.LabelSpreading`, which also uses the
  unlabeled images, by spreading labels along a nearest-neighbour graph of
  the raw pixels.

A fourth contender combines both ideas: ``LabelSpreading`` on the CueCo
embeddings instead of the pixels.

It shows two ways of handing unlabeled images to a ``CueCoClassifier``: rows
labeled ``-1`` (scikit-learn's semi-supervised convention), and an embedder
fitted once and reused, without training it again, through
:class:`sklearn.frozen.FrozenEstimator`.

"""

# %%
# Setup
# -----

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading

from skcueco import CueCoClassifier, CueCoEmbedder

# %%
# Data and label budgets
# ----------------------
#
# A quarter of the 1,797 digits is held out for scoring. Of the 1,347
# training images, only a fraction keeps its label; the others are marked
# ``-1``. The labeled rows are drawn stratified, so that even the 1 % budget
# (13 images) holds every digit at least once. Small budgets give noisy
# scores, so each fraction below 100 % is drawn five times with different
# seeds and the accuracies are averaged.

digits = load_digits()
X_train, X_test, y_train, y_test = train_test_split(
    digits.images, digits.target, test_size=0.25, random_state=0,
    stratify=digits.target,
)
FRACTIONS = [0.01, 0.05, 0.10, 1.0]
N_DRAWS = 5


def semi_supervised_labels(fraction, seed):
    """``y_train`` with all but ``fraction`` of the labels replaced by -1."""
    if fraction == 1.0:
        return y_train.copy()
    labeled, _ = train_test_split(
        np.arange(len(y_train)), train_size=round(fraction * len(y_train)),
        stratify=y_train, random_state=seed,
    )
    y = np.full_like(y_train, -1)
    y[labeled] = y_train[labeled]
    return y


def draws(fraction):
    return range(1 if fraction == 1.0 else N_DRAWS)


print(f"{len(X_train)} training images, {len(X_test)} held-out images")

# %%
# Pretraining on unlabeled images, the one-call way
# -------------------------------------------------
#
# ``CueCoClassifier.fit(X, y)`` pretrains its embedder on **every** row of
# ``X`` and then trains its head. Here 10 % of the training labels are kept.
# ``head="linear"`` is the linear-evaluation protocol: a linear layer on the
# embeddings of the labeled rows (what ``transform`` returns), trained by SGD
# while the backbone stays fixed. (The default head, ``"propagation"``, would first
# spread the labels to the unlabeled rows; this example compares label
# spreading separately below.)

embedder = CueCoEmbedder(max_epochs=20, hidden_dim=512, cluster_warmup=5, random_state=0)
y_10 = semi_supervised_labels(0.10, seed=0)
start = time.perf_counter()
clf_10 = CueCoClassifier(embedder, head="linear", random_state=0).fit(X_train, y_10)
print(f"Pretrained on {clf_10.embedder_.n_iter_} epochs of {len(X_train)} images and "
      f"trained the head on {np.sum(y_10 != -1)} labels in "
      f"{time.perf_counter() - start:.1f} s on {clf_10.device_}")
print(f"Held-out accuracy with 10 % of the labels: {clf_10.score(X_test, y_test):.4f}")

# %%
# Reusing the pretrained embedder
# -------------------------------
#
# Pretraining is by far the most expensive step, and it does not depend on
# the labels. ``clf_10.embedder_`` is the fitted embedder; wrapped in a
# :class:`~sklearn.frozen.FrozenEstimator` it survives the cloning that
# ``fit`` does and is never trained again, so every new classifier only fits
# its head. With the same seed, the head is the very same as above.

pretrained = FrozenEstimator(clf_10.embedder_)
clf_again = CueCoClassifier(pretrained, head="linear", random_state=0)
clf_again.fit(X_train, y_10)
same = np.array_equal(clf_again.predict_proba(X_test), clf_10.predict_proba(X_test))
print(f"Frozen embedder reproduces the one-call classifier exactly: {same}")

# %%
# Accuracy against the number of labels
# -------------------------------------
#
# For each budget all methods see the same labels. The logistic regression
# (on standardised pixels) is fitted on the labeled rows alone;
# ``LabelSpreading`` gets all training rows with ``-1`` marking the unlabeled
# ones, like ``CueCoClassifier``. Its graph joins each image to its 20
# nearest neighbours, in pixel space or, behind the frozen embedder in a
# pipeline, in the space of the standardised CueCo embeddings.
#
# Why 20 and not scikit-learn's default of 7: each image takes its label from
# its neighbours, which take theirs from their own neighbours, and so on. A
# tight group of images whose neighbours all lie inside the group receives no
# label at all when none of its images is labeled, and a held-out image next
# to such a group then gets a probability of 0 for every class (scikit-learn
# divides 0 by 0 and warns). CueCo embeddings form tight groups, and with 10
# neighbours and 13 labels this happens; 20 neighbours make such closed
# groups larger, and none is left without a label here.

N_NEIGHBORS = 20


def cueco(X, y):
    return CueCoClassifier(pretrained, head="linear", random_state=0).fit(X, y)


def cueco_propagation(X, y):
    # the default head: labels propagated over the embeddings' kNN graph, then
    # the linear layer trained on every row
    return CueCoClassifier(pretrained, head="propagation", random_state=0).fit(X, y)


def pixels_logistic(X, y):
    labeled = y != -1
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return model.fit(X[labeled], y[labeled])


def label_spreading(X, y):
    model = LabelSpreading(kernel="knn", n_neighbors=N_NEIGHBORS, tol=1e-6, max_iter=1000)
    return model.fit(X, y)


def cueco_label_spreading(X, y):
    spreading = LabelSpreading(kernel="knn", n_neighbors=N_NEIGHBORS, tol=1e-6,
                               max_iter=1000)
    return make_pipeline(pretrained, StandardScaler(), spreading).fit(X, y)


METHODS = {
    "CueCo + linear head": (cueco, X_train, X_test),
    "CueCo + propagation head (default)": (cueco_propagation, X_train, X_test),
    "Logistic regression on pixels": (pixels_logistic, X_train.reshape(len(X_train), -1),
                                      X_test.reshape(len(X_test), -1)),
    "LabelSpreading on pixels": (label_spreading, X_train.reshape(len(X_train), -1) / 16,
                                 X_test.reshape(len(X_test), -1) / 16),
    "LabelSpreading on CueCo": (cueco_label_spreading, X_train, X_test),
}

rows = []
for method, (fit, Xtr, Xte) in METHODS.items():
    for fraction in FRACTIONS:
        scores = []
        for seed in draws(fraction):
            y = semi_supervised_labels(fraction, seed)
            scores.append(fit(Xtr, y).score(Xte, y_test))
        rows.append(dict(method=method, fraction=fraction, n_labeled=int(np.sum(y != -1)),
                         accuracy=np.mean(scores), std=np.std(scores)))
        print(f"label_fraction method={method.replace(' ', '_')} fraction={fraction:.2f} "
              f"n_labeled={rows[-1]['n_labeled']} accuracy={np.mean(scores):.4f} "
              f"std={np.std(scores):.4f} draws={len(scores)}")

results = pd.DataFrame(rows)
print(results.pivot(index="fraction", columns="method", values="accuracy")
      .round(3).to_string())

# %%
# The figure
# ----------
#
# Mean held-out accuracy against the fraction of labeled training images (log
# scale); the bars span one standard deviation over the five draws.

fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
for (method, group), marker in zip(results.groupby("method", sort=False), "osD^v"):
    ax.errorbar(group["fraction"] * 100, group["accuracy"], yerr=group["std"],
                marker=marker, capsize=3, label=method)
ax.set_xscale("log")
ax.set_xticks([f * 100 for f in FRACTIONS], [f"{f:.0%}" for f in FRACTIONS])
ax.set_xlabel("labeled training images")
ax.set_ylabel("held-out accuracy")
ax.set_title("Digits with few labels")
ax.grid(alpha=0.3)
ax.legend(loc="lower right")
plt.show()

# %%
# Are the probabilities usable?
# -----------------------------
#
# With 10 % of the labels, the log-loss and the expected calibration error
# (ECE: the mean gap between confidence and accuracy over 10 bins of
# confidence, weighted by their size) of ``predict_proba`` on the held-out
# images, averaged over the five draws, for the two CueCo heads.


def expected_calibration_error(proba, y_true, n_bins=10):
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return sum(np.sum(bins == b) / len(y_true)
               * abs(correct[bins == b].mean() - confidence[bins == b].mean())
               for b in range(n_bins) if np.any(bins == b))


for method, fit in [("linear", cueco), ("propagation", cueco_propagation)]:
    losses, eces = [], []
    for seed in draws(0.10):
        proba = fit(X_train, semi_supervised_labels(0.10, seed)).predict_proba(X_test)
        losses.append(log_loss(y_test, proba, labels=np.arange(10)))
        eces.append(expected_calibration_error(proba, y_test))
    print(f"calibration head={method} fraction=0.10 log_loss={np.mean(losses):.3f} "
          f"ece={np.mean(eces):.3f}")

# %%
# Reading the result
# ------------------
#
# CueCo's features were learned from the unlabeled images, so a linear head
# on them needs fewer labels than a logistic regression on pixels: the gap is
# widest with 1 % of the labels (about one image per digit) and closes as
# labels are added, until every method reaches about the same accuracy with
# all of them.
#
# A linear head trained on a dozen images uses the unlabeled images only
# through the features, though. ``LabelSpreading`` uses them directly, by
# propagating labels along the neighbourhood graph, and digits form tight
# clusters even in pixel space: on pixels it beats the linear head at every
# budget below 100 % here. Spreading labels over the CueCo embeddings
# combines both: it beats both on pixels at every budget, by a wide margin
# with 1 % of the labels and by a hair with 5 % and 10 %. Which images
# are labeled matters a lot at 1 % (see the error bars).
#
# The default head of ``CueCoClassifier``, ``head="propagation"``, does the
# same inside the classifier: it spreads the labels over the kNN graph of the
# embeddings of all rows (5 neighbours), then trains the linear layer on every
# row, each unlabeled one with its propagated label, weighted by how certain
# that label is. It keeps the linear head's accuracy with all the labels, its
# ``predict_proba`` and ``decision_function``, and it beats ``LabelSpreading``
# on pixels at every budget.
#
# The pretraining is short (20 epochs of a small CNN) to keep the example
# fast; more epochs (``max_epochs``) give better features.

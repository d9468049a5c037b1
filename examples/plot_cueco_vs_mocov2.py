"""
==============================================
CueCo against MoCo v2: the clustering term
==============================================

CueCo is MoCo v2 plus a clustering term that draws every projection towards
the centroid its other view is assigned to (see :ref:`method`). With
``cluster_weight=0`` that term is off and :class:`~skcueco.CueCoEmbedder`
trains exactly symmetric MoCo v2, the method CueCo extends. This example
trains both on scikit-learn's digits, with the same seed, network, views and
schedule, and compares them with the standard protocols of
:func:`skcueco.evaluation.evaluate_embedder`.

Two short runs on a small data set measure very little: this shows *how* to
compare the two, not which is better. The comparison that settles it uses
the paper's data sets, training budget and linear evaluation
(``benchmarks/reproduce.py`` in the repository).
"""

# %%
# Two runs that differ in one parameter
# -------------------------------------

import time

import matplotlib.pyplot as plt
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skcueco import CueCoEmbedder
from skcueco.evaluation import evaluate_embedder

digits = load_digits()
X_train, X_test, y_train, y_test = train_test_split(
    digits.images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
)

common = dict(max_epochs=15, hidden_dim=256, n_clusters=10, cluster_warmup=3, random_state=0)
embedders = {
    "MoCo v2 (cluster_weight=0)": CueCoEmbedder(cluster_weight=0.0, **common),
    "CueCo (cluster_weight=1)": CueCoEmbedder(cluster_weight=1.0, **common),
}
for name, embedder in embedders.items():
    start = time.perf_counter()
    embedder.fit(X_train)
    print(f"{name}: {embedder.n_iter_} epochs in {time.perf_counter() - start:.1f} s")

# %%
# The same protocols for both
# ---------------------------
#
# ``evaluate_embedder`` embeds both splits and measures: the linear probe
# (logistic regression on the training embeddings, accuracy on the test
# split), the weighted kNN vote used to monitor self-supervised training, and
# how well clusters of the test embeddings agree with the digits (NMI, ARI
# and the accuracy of the best matching of clusters to classes), for k-means
# on the embeddings and for the embedder's own clusters (``predict``).
#
# Both read ``predict``'s clusters the same way at the end of ``fit``: from
# the graph of each training image's nearest neighbours. MoCo v2 has no
# clustering term; CueCo's pulled the projections towards its centroids
# during training.

tables = []
for name, embedder in embedders.items():
    table = evaluate_embedder(embedder, X_train, y_train, X_test, y_test, random_state=0)
    tables.append(table.assign(method=name))
results = pd.concat(tables).pivot_table(index=["protocol", "metric"], columns="method",
                                        values="value", sort=False)
print(results.round(3).to_string())

# %%
# What the clustering term does to training
# -----------------------------------------
#
# Both runs have the same contrastive term. After the warm-up, CueCo adds the
# clustering term; its value falls as the projections gather around the
# centroids. ``history_`` holds both terms for every epoch.

fig, (ax_con, ax_clu) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
for (name, embedder), marker in zip(embedders.items(), "os"):
    history = embedder.history_
    ax_con.plot(history["epoch"], history["contrastive"], marker=marker, label=name)
    ax_clu.plot(history["epoch"], history["clustering"], marker=marker, label=name)
for ax, title in [(ax_con, "contrastive term"), (ax_clu, "clustering term")]:
    ax.axvline(common["cluster_warmup"] + 0.5, color="grey", linestyle="--",
               label="end of warm-up")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend()
ax_clu.set_ylim(0, None)
plt.show()

# %%
# Reading the numbers
# -------------------
#
# The two objectives share the contrastive term, so their linear-probe and
# kNN accuracies are usually close; the clustering term is meant to make the
# embeddings more compact around the centroids, which shows first in the
# clustering scores, especially in those of the embedder's own clusters
# (``predict``). One seed and 15 epochs on 1,347 small images leave a lot of
# noise: repeat with several ``random_state`` values, and train longer,
# before drawing conclusions.
#
# The cluster benchmark of the repository does exactly that, over 3 seeds
# at 40 epochs with the defaults (``python benchmarks/clusters.py --datasets
# digits --epochs 40 --models DIR``, then ``python benchmarks/readouts.py
# --models DIR`` and ``python benchmarks/spaces.py --models DIR`` for the
# probe and k-means on ``transform``; mean ± standard deviation on the
# held-out split):
#
# ==============  =============  =============  =============  =============
# method          linear probe   k-means NMI    predict NMI    predict ARI
# ==============  =============  =============  =============  =============
# CueCo           0.992 ± 0.001  0.924 ± 0.011  0.946 ± 0.008  0.929 ± 0.010
# MoCo v2         0.994 ± 0.003  0.902 ± 0.013  0.928 ± 0.019  0.896 ± 0.040
# ==============  =============  =============  =============  =============
#
# On digits the clustering term leaves the probe where it is, and
# ``predict`` groups 96.7 % of the test digits correctly (MoCo v2: 94.6 %).
# Read from the neighbourhood graph, much of the clusters' quality comes
# from the contrastive embedding that both share; the clustering term,
# trained towards the graph's own clusters, adds the rest. The
# documentation's method results page compares the two on seven image
# sets.

"""
===================================================
Feature vectors instead of images: the MLP backbone
===================================================

CueCo is meant for images, but :class:`~skcueco.CueCoEmbedder` also accepts
rows of plain numbers, such as the 30 measurements per tumour of
scikit-learn's breast-cancer data set. With ``image_shape=None`` the rows are
read as feature vectors: they are standardised with the training mean and
standard deviation, the backbone is a multi-layer perceptron, and the two
views of a row differ by Gaussian noise and by randomly masked features
instead of crops and colour changes.

This example trains such an embedder without labels, compares a
logistic-regression probe on its embeddings with the same probe on the
standardised measurements, and maps both to the plane. It runs in a few
seconds on a CPU.
"""

# %%
# Data
# ----
#
# 569 tumours, 30 measurements each, two classes (malignant, benign). 30
# values would not be read as an image anyway (they are not a square number
# of pixels), but ``image_shape=None`` says so explicitly.

import matplotlib.pyplot as plt
from sklearn.datasets import load_breast_cancer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skcueco import CueCoEmbedder

data = load_breast_cancer()
X_train, X_test, y_train, y_test = train_test_split(
    data.data, data.target, test_size=0.3, random_state=0, stratify=data.target
)
print(f"{X_train.shape[0]} training and {X_test.shape[0]} test rows "
      f"of {X_train.shape[1]} features")

# %%
# Training without labels
# -----------------------
#
# ``backbone="auto"`` picks the MLP for vectors (``backbone="mlp"`` asks for
# it by name). A small data set calls for a small queue: the queue holds keys
# of *other* rows as negatives, and it is capped at the number of training
# rows anyway. Two clusters match the two classes, but the embedder is not
# told which row belongs to which.

embedder = CueCoEmbedder(image_shape=None, max_epochs=60, batch_size=64, hidden_dim=128,
                         queue_size=256, n_clusters=2, cluster_warmup=10, random_state=0)
embedder.fit(X_train)
print(f"{type(embedder.encoder_).__name__} backbone, {embedder.n_iter_} epochs, "
      f"{len(embedder.get_feature_names_out())} embedding features")

# %%
# A linear probe
# --------------
#
# The same standardised logistic regression is trained on the training rows
# with their labels, once on the embeddings and once on the measurements.


def probe_accuracy(Z_train, Z_test):
    """Test accuracy of a standardised logistic regression."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return probe.fit(Z_train, y_train).score(Z_test, y_test)


Z_train, Z_test = embedder.transform(X_train), embedder.transform(X_test)
print(f"CueCo embeddings probe accuracy: {probe_accuracy(Z_train, Z_test):.4f}")
print(f"Raw features probe accuracy: {probe_accuracy(X_train, X_test):.4f}")

# %%
# On such data a linear model on the raw measurements is already very good,
# and self-supervised pretraining has little to add: there are few rows, and
# the views (noise, masked features) encode much weaker prior knowledge than
# crops and colour changes do for photographs. The embeddings keep most of
# what separates the classes, which the maps below show: the first two
# principal components of the test rows, on the measurements and on the
# embeddings, coloured by the true class that the embedder never saw.

fig, axes = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
for ax, (title, Z_fit, Z_show) in zip(axes, [
    ("standardised measurements", X_train, X_test),
    ("CueCo embeddings", Z_train, Z_test),
]):
    pca = make_pipeline(StandardScaler(), PCA(n_components=2)).fit(Z_fit)
    xy = pca.transform(Z_show)
    for label, name in enumerate(data.target_names):
        ax.scatter(*xy[y_test == label].T, s=10, label=name)
    ax.set_title(f"PCA of {title}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend()
plt.show()

# %%
# The clusters learned during training can be compared with the classes:
# ``predict`` gives each row the cluster its most similar training rows vote
# for.

from sklearn.metrics import adjusted_rand_score

print(f"Adjusted Rand index of the 2 clusters: "
      f"{adjusted_rand_score(y_test, embedder.predict(X_test)):.3f}")

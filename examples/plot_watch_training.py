"""
======================================
Watching a training run in TensorBoard
======================================

:class:`~skcueco.callbacks.TensorBoard` writes what happens during ``fit``
to a folder that TensorBoard reads while training goes on: the loss and its
contrastive and clustering terms, the learning rate, the weight of the
clustering term, the throughput, how many of the latest training images each
cluster holds, the kNN accuracy of a
:class:`~skcueco.callbacks.KNNMonitor`, and at the end the embeddings of a
few hundred held-out images with the images as thumbnails, for TensorBoard's
embedding projector.

This example trains on scikit-learn's digits for a few epochs, logging
every optimiser step into a temporary folder, then reads the logged values
back and draws the loss curves as TensorBoard does: the raw values faint,
their exponential moving average bold. Run ``tensorboard --logdir FOLDER``
on the folder to see the same curves, and the projector, in the browser.
It needs the ``tensorboard`` package (``pip install "skcueco[tensorboard]"``);
without it the example plots ``history_``, one point per epoch. It runs in a
few seconds on a CPU.
"""

# %%
# Training with the callback
# --------------------------
#
# ``update_freq="step"`` logs every optimiser step (``"epoch"``, the default,
# one point per epoch). The step losses stay on the training device and are
# read once per epoch, so logging does not slow a GPU down.
# ``embedding_data`` and ``embedding_labels`` fill the projector;
# ``max_embedding_images`` caps how many images it embeds.

import tempfile
from importlib.util import find_spec

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder
from skcueco.backbones import SmallCNN
from skcueco.callbacks import KNNMonitor, TensorBoard

digits = load_digits()
X_train, y_train = digits.images[:600], digits.target[:600]
X_test, y_test = digits.images[600:1000], digits.target[600:1000]
log_dir = tempfile.TemporaryDirectory()
has_tensorboard = find_spec("tensorboard") is not None

# the monitor's labels are for measuring only: training never sees them
callbacks = [KNNMonitor(X_train, y_train, X_test, y_test)]
if has_tensorboard:
    callbacks.append(TensorBoard(log_dir.name, update_freq="step", embedding_data=X_test,
                                 embedding_labels=y_test, max_embedding_images=300))
# a narrow network, to keep the example quick
embedder = CueCoEmbedder(backbone=SmallCNN(width=8), max_epochs=3, batch_size=50,
                         hidden_dim=128, projection_dim=32, queue_size=300, n_clusters=10,
                         cluster_warmup=1, random_state=0, callbacks=callbacks)
embedder.fit(X_train)
print(f"{embedder.n_iter_} epochs of {len(X_train) // 50} steps")

# %%
# What was logged
# ---------------
#
# TensorBoard's own reader lists the curves in the event file; the
# projector's files sit next to it.

if has_tensorboard:
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir.name, size_guidance={"scalars": 0})
    events.Reload()
    for tag in sorted(events.Tags()["scalars"]):
        print(f"{tag}: {len(events.Scalars(tag))} values")
    print("projector files:", sorted(p.name for p in Path(log_dir.name).rglob("*.*")
                                     if "tfevents" not in p.name))

# %%
# The loss curves, as TensorBoard draws them
# ------------------------------------------
#
# TensorBoard smooths a curve with an exponential moving average, debiased
# at the start (its "smoothing" slider, 0.6 by default). The contrastive term
# first rises, while the queue of negatives fills with keys of real images
# (harder to tell apart than the random keys it starts with), then levels
# off: three epochs are far too few for it to fall much. The clustering
# term is 0 in the warm-up epoch and switches on with the second one, which
# lifts the total loss. The kNN accuracy, measured after every epoch, is
# drawn at the epoch's last step; the dotted lines mark the epochs.


def smooth(values, weight=0.6):
    """TensorBoard's smoothing: a debiased exponential moving average."""
    out, last = [], 0.0
    for i, value in enumerate(values, start=1):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight ** i))
    return np.array(out)


if has_tensorboard:
    curves = {name: events.Scalars(f"train/{name}")
              for name in ("loss", "contrastive", "clustering", "knn_accuracy")}
    curves = {name: (np.array([p.step for p in points]), np.array([p.value for p in points]))
              for name, points in curves.items()}
    xlabel = "optimiser step"
    epoch_ends = curves["knn_accuracy"][0]
    smoothing = 0.6
else:  # history_: one point per epoch
    history = embedder.history_
    curves = {name: (history["epoch"].to_numpy(), history[name].to_numpy())
              for name in ("loss", "contrastive", "clustering", "knn_accuracy")}
    xlabel = "epoch"
    epoch_ends = []
    smoothing = 0.0  # too few points to smooth

fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for name, color in [("loss", "C0"), ("contrastive", "C1"), ("clustering", "C2")]:
    steps, values = curves[name]
    ax_loss.plot(steps, values, color=color, alpha=0.25, linewidth=1)
    ax_loss.plot(steps, smooth(values, smoothing), color=color, linewidth=2, label=name)
for ax in (ax_loss, ax_knn):
    for end in epoch_ends[:-1]:
        ax.axvline(end + 0.5, color="grey", linestyle=":", linewidth=1)
ax_loss.set_xlabel(xlabel)
ax_loss.set_title("train/loss and its terms")
ax_loss.legend()
ax_loss.grid(alpha=0.3)
steps, values = curves["knn_accuracy"]
ax_knn.plot(steps, values, "o-", color="C3")
ax_knn.set_xlabel(xlabel)
ax_knn.set_title("train/knn_accuracy")
ax_knn.grid(alpha=0.3)
plt.show()

log_dir.cleanup()

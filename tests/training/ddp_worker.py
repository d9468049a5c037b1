"""Run by tests/training/test_distributed.py under torchrun (not collected by pytest).

Usage: python -m torch.distributed.run --standalone --nproc_per_node=N
       tests/training/ddp_worker.py OUT_DIR BATCH_SIZE [--fail-rank R] [--graph-targets]
       [--images] [--drop-negatives]
"""

import argparse
import os

import numpy as np
import torch

from skcueco import CueCoEmbedder
from skcueco.training.distributed import shutdown_distributed
from skcueco.callbacks import Callback


def data():
    """Three blobs of 16-dimensional vectors, the same on every rank."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(3, 16))
    return (centers[np.arange(192) % 3] + rng.normal(size=(192, 16))).astype(np.float32)


def images():
    """Three classes of 16x16 grayscale patterns: the read-out adds views of them."""
    rng = np.random.default_rng(0)
    templates = rng.uniform(size=(3, 16, 16))
    noisy = templates[np.arange(192) % 3] + rng.normal(scale=0.1, size=(192, 16, 16))
    return noisy.clip(0, 1).astype(np.float32)


PARAMS = dict(max_epochs=4, hidden_dim=64, projection_dim=16, queue_size=100, n_clusters=3,
              cluster_warmup=1, image_shape=None, random_state=0, device="cpu")


class FailOnRank(Callback):
    def __init__(self, rank):
        self.rank = rank

    def on_epoch_end(self, trainer, epoch, logs):
        if int(os.environ.get("RANK", "0")) == self.rank and epoch == 1:
            raise RuntimeError(f"rank {self.rank} fails on purpose")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("batch_size", type=int)
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--graph-targets", action="store_true")
    parser.add_argument("--images", action="store_true")
    parser.add_argument("--drop-negatives", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    callbacks = [FailOnRank(args.fail_rank)] if args.fail_rank is not None else None
    params = {**PARAMS, **({"cluster_targets": "graph"} if args.graph_targets else {})}
    if args.drop_negatives:
        params["cluster_negatives"] = "drop"
    X = data()
    view_calls = []
    if args.images:
        from skcueco.training import run

        params.update(image_shape="auto", hidden_dim=32, cluster_graph=10)
        X = images()
        view_pass = run.view_pass

        def counted(*a, **k):
            view_calls.append(a[4].shape[0])  # the rows read
            return view_pass(*a, **k)

        run.view_pass = counted
    est = CueCoEmbedder(batch_size=args.batch_size, callbacks=callbacks, **params).fit(X)
    rank = int(os.environ.get("RANK", "0"))
    model = est._trained.train_state["task"]["model"]
    np.savez(
        os.path.join(args.out, f"rank{rank}.npz"),
        weights=np.concatenate([v.numpy().ravel() for v in est.encoder_.state_dict().values()]),
        centers=est.cluster_centers_,
        queue=model["queue.keys"].numpy(),
        queue_ptr=model["queue.ptr"].numpy(),
        queue_labels=model["queue.labels"].numpy(),
        loss=est.history_["loss"].to_numpy(),
        global_step=est._trained.train_state["global_step"],
        embedding=est.transform(X[:10]),
        prototype_labels=est.cluster_prototype_labels_,
        view_calls=np.array(view_calls, dtype=np.int64),
    )
    est.save(os.path.join(args.out, "model.pt"))  # rank 0 only
    shutdown_distributed()


if __name__ == "__main__":
    main()

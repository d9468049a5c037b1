"""Reproduce the CueCo paper's table: pretraining, linear evaluation, kNN, MoCo v2.

For each data set (CIFAR-10, CIFAR-100, ImageNet-100) and method (CueCo, and
the MoCo v2 baseline: the same recipe with ``cluster_weight=0``, at the same
budget) this script

1. pretrains a ``CueCoEmbedder`` with ``skcueco.recipes.recipe(dataset)``,
   checkpointing every few epochs;
2. measures the kNN monitor (k=200, temperature 0.1, cosine, on the backbone
   features; bank = training split, queries = test split);
3. runs linear evaluation: a linear head on the frozen backbone
   (``CueCoClassifier(FrozenEstimator(embedder), head="linear")``, 100 epochs,
   SGD lr 0.1, batch 256; augmented views for the CIFAR arrays), top-1 on the
   test split;

and appends one row per (data set, method) to ``results.csv``, rewriting
``results.md`` with the paper's numbers beside ours and the protocol (epochs,
batch, device) in every row. Rerun after an interruption: finished rows are
skipped, a finished pretraining is reloaded from its saved model, and a
half-done one continues from its last checkpoint (``fit(X, resume_from=...)``).

Examples
--------
The paper's protocol on one GPU (CIFAR downloaded by torchvision; ImageNet in
ImageFolder layout under ``/data/imagenet/{train,val}``)::

    python benchmarks/reproduce.py --data data --download \\
        --imagenet-root /data/imagenet --out results

About ten seconds on two CPU cores, on generated files in the real formats (what
the test suite runs; the accuracies mean nothing)::

    python benchmarks/reproduce.py --smoke --out /tmp/smoke
"""

import argparse
import csv
import datetime
import os
import pickle
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from sklearn.frozen import FrozenEstimator

from skcueco import CueCoClassifier, CueCoEmbedder, __version__
from skcueco.callbacks import Checkpoint, KNNMonitor, knn_accuracy
from skcueco.datasets import (
    IMAGENET100_CLASSES,
    load_cifar10,
    load_cifar100,
    load_imagenet100,
)
from skcueco.recipes import recipe

DATASETS = ("cifar10", "cifar100", "imagenet100")
METHODS = {"cueco": {}, "mocov2": {"cluster_weight": 0.0}}
# linear top-1 reported in the paper (ResNet-18); MoCo v2 on CIFAR-10 is the
# paper's baseline table (solo-learn's MoCo v2+, 1000 epochs)
PAPER = {("cifar10", "cueco"): 91.40, ("cifar100", "cueco"): 68.56,
         ("imagenet100", "cueco"): 78.65, ("cifar10", "mocov2"): 92.94}
COLUMNS = ["dataset", "method", "linear_top1", "knn_top1", "paper_linear_top1", "epochs",
           "batch_size", "linear_epochs", "linear_augmentation", "device", "pretrain_minutes",
           "run", "skcueco_version", "date"]
SMOKE_PARAMS = dict(backbone="mlp", max_epochs=2, batch_size=32, hidden_dim=64,
                    projection_dim=32, queue_size=64, n_clusters=10, cluster_warmup=1,
                    num_workers=0)


class Interrupted(Exception):
    """Pretraining stopped early (Ctrl-C); rerun to resume from the checkpoint."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data", help="folder holding the CIFAR files")
    p.add_argument("--imagenet-root", default=None,
                   help="ImageNet(-100) with train/ and val/ class folders")
    p.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", default="results", help="results, models and checkpoints")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's")
    p.add_argument("--device", default="auto")
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--knn-every", type=int, default=0,
                   help="record the kNN monitor in history_ every N epochs (0: off)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CPU run on generated data in the real file formats")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.linear_epochs, args.checkpoint_every = "cpu", 5, 1
    return args


def main(argv=None):
    """Run every missing row; returns the rows of results.csv (None if interrupted)."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        return run_all(args, out)
    n_threads = torch.get_num_threads()
    # tiny networks: one intra-op thread is faster, above all on shared cores
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="skcueco-smoke-") as root:
            args.data = args.imagenet_root = root
            write_fake_data(root)  # the same files on every run: resuming works
            return run_all(args, out)
    finally:
        torch.set_num_threads(n_threads)


def run_all(args, out):
    rows = read_rows(out / "results.csv")
    run = "smoke" if args.smoke else "full"
    for dataset in args.datasets:
        data = None  # loaded only when a row of this data set is missing
        for method in args.methods:
            params = make_params(dataset, method, args)
            if any(r["dataset"] == dataset and r["method"] == method and r["run"] == run
                   and int(r["epochs"]) == params["max_epochs"] for r in rows):
                print(f"{dataset} / {method}: done, skipped")
                continue
            data = data or load(dataset, args)
            try:
                row = run_row(dataset, method, params, data, args, out)
            except Interrupted as exc:
                print(exc)
                return None
            rows.append(row)
            write_results(out, rows)
            print(f"{dataset} / {method}: linear {row['linear_top1']}, kNN {row['knn_top1']}")
    write_results(out, rows)
    return rows


def make_params(dataset, method, args):
    params = {**recipe(dataset), **METHODS[method], "device": args.device, "random_state": 0}
    if args.smoke:
        params.update(SMOKE_PARAMS, image_size=16 if dataset == "imagenet100" else None)
    if args.epochs is not None:
        params["max_epochs"] = args.epochs
    return params


def load(dataset, args):
    """``(X_train, y_train, X_test, y_test)`` of a data set."""
    if dataset == "imagenet100":
        if args.imagenet_root is None:
            raise SystemExit("--imagenet-root is required for imagenet100.")
        size = 16 if args.smoke else recipe("imagenet100")["image_size"]
        return (*load_imagenet100(args.imagenet_root, "train", image_size=size),
                *load_imagenet100(args.imagenet_root, "val", image_size=size))
    loader = load_cifar10 if dataset == "cifar10" else load_cifar100
    # generated files cannot match torchvision's MD5 sums: only existence is checked
    check = (mock.patch("torchvision.datasets.cifar.check_integrity",
                        lambda path, md5=None: os.path.isfile(path))
             if args.smoke else nullcontext())
    with check:
        return (*loader(args.data, train=True, download=args.download),
                *loader(args.data, train=False, download=args.download))


def run_row(dataset, method, params, data, args, out):
    X_train, y_train, X_test, y_test = data
    start = time.perf_counter()
    name = f"{dataset}-{method}-{params['max_epochs']}ep" + ("-smoke" if args.smoke else "")
    callbacks = []
    if args.knn_every:
        callbacks.append(KNNMonitor(X_train, y_train, X_test, y_test, every=args.knn_every))
    embedder = pretrain(X_train, params, out / "models", name, args.checkpoint_every, callbacks)
    minutes = (time.perf_counter() - start) / 60
    knn = knn_accuracy(embedder.transform(X_train), y_train, embedder.transform(X_test),
                       y_test, k=200, temperature=0.1)
    augment = isinstance(X_train, np.ndarray)  # decoding files every epoch is too slow
    clf = CueCoClassifier(FrozenEstimator(embedder), head="linear",
                          head_epochs=args.linear_epochs, head_augmentation=augment,
                          random_state=0).fit(X_train, y_train)
    device = embedder.device_
    return {
        "dataset": dataset, "method": method,
        "linear_top1": round(100 * clf.score(X_test, y_test), 2),
        "knn_top1": round(100 * knn, 2),
        "paper_linear_top1": PAPER.get((dataset, method), ""),
        "epochs": params["max_epochs"], "batch_size": params["batch_size"],
        "linear_epochs": args.linear_epochs, "linear_augmentation": augment,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"{device.type}, {torch.get_num_threads()} thread(s)"),
        "pretrain_minutes": round(minutes, 2), "run": "smoke" if args.smoke else "full",
        "skcueco_version": __version__, "date": datetime.date.today().isoformat(),
    }


def pretrain(X, params, folder, name, checkpoint_every=10, callbacks=()):
    """A fitted embedder: reloaded if saved, resumed from a checkpoint, or trained."""
    model_path = Path(folder) / f"{name}.pt"
    if model_path.exists():
        return CueCoEmbedder.load(model_path)
    checkpoints = Path(folder) / f"{name}-checkpoints"
    saved = sorted(checkpoints.glob("epoch-*.pt"))
    resume = saved[-1] if saved else None
    if resume is not None:
        print(f"resuming {name} from {resume}")
    embedder = CueCoEmbedder(**{
        **params, "callbacks": [Checkpoint(checkpoints, every=checkpoint_every),
                                *callbacks, *(params.get("callbacks") or [])]})
    embedder.fit(X, resume_from=resume)
    if embedder.n_iter_ < embedder.max_epochs:
        raise Interrupted(f"{name}: interrupted after {embedder.n_iter_} epochs; "
                          "run again to resume from the last checkpoint.")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    embedder.save(model_path)
    return embedder


def read_rows(path):
    """The rows of a results.csv (strings), [] if there is none."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_results(out, rows):
    """results.csv (all columns) and results.md (the table, paper beside ours)."""
    tmp = out / "results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "results.csv")  # never a half-written table
    lines = [
        "# CueCo: linear evaluation top-1 (%)", "",
        "*ours*: measured by `benchmarks/reproduce.py` on the device in the row. "
        "*paper*: reported in the CueCo paper (ResNet-18; MoCo v2 on CIFAR-10 from "
        "its baseline table, solo-learn, 1000 epochs), not measured here. Rows marked "
        "smoke ran on generated data: their accuracies mean nothing.", "",
        "| data set | method | linear (ours) | kNN (ours) | linear (paper) | protocol "
        "| device | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        augmented = " + aug" if str(r["linear_augmentation"]) == "True" else ""
        protocol = (f"{r['epochs']} ep, batch {r['batch_size']}, linear "
                    f"{r['linear_epochs']} ep{augmented}, kNN k=200 t=0.1, "
                    f"{r['pretrain_minutes']} min")
        lines.append(f"| {r['dataset']} | {r['method']} | {r['linear_top1']} | {r['knn_top1']} "
                     f"| {r['paper_linear_top1'] or '-'} | {protocol} | {r['device']} "
                     f"| {r['run']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def write_fake_data(root, n_train=100, n_test=50, seed=0):
    """Tiny CIFAR-10/100 batch files and an ImageNet-100 folder of PNGs under ``root``."""
    rng = np.random.RandomState(seed)
    palette = rng.randint(0, 256, (100, 3))

    def images(n, n_classes):
        y = rng.randint(0, n_classes, n)
        colour = palette[:n_classes][y]  # a learnable cue: one colour per class
        X = np.clip(colour[:, :, None] + rng.randint(-40, 40, (n, 3, 1024)), 0, 255)
        return X.reshape(n, 3072).astype(np.uint8), y.tolist()

    def dump(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    c10 = Path(root) / "cifar-10-batches-py"
    for i in range(1, 6):
        X, y = images(n_train // 5, 10)
        dump(c10 / f"data_batch_{i}", {"data": X, "labels": y})
    X, y = images(n_test, 10)
    dump(c10 / "test_batch", {"data": X, "labels": y})
    dump(c10 / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    c100 = Path(root) / "cifar-100-python"
    for split, n in (("train", n_train), ("test", n_test)):
        X, y = images(n, 10)  # 10 of the 100 labels: a few images per class
        dump(c100 / split, {"data": X, "fine_labels": y, "coarse_labels": [0] * n})
    dump(c100 / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    for split, per_class in (("train", 2), ("val", 1)):
        for k, wnid in enumerate(IMAGENET100_CLASSES):
            folder = Path(root) / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):  # JPEGs of varying sizes, as in ImageNet
                pixels = np.full((20 + j, 24, 3), (k * 2, 255 - k * 2, j * 80), np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{j}.JPEG", quality=90)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 130)

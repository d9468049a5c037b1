"""The main job: fit CueCo on a data set and compare linear-probe accuracies.

Run ``python -m skcueco`` (or the ``skcueco`` console script). Without
``--data`` it uses scikit-learn's digits, which ship with scikit-learn.
"""

import argparse
import sys
import time

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .. import CueCoEmbedder
from ..backbones import BACKBONE_NAMES

# settings that make the digits demo finish in well under two minutes on two
# CPU cores; everything else is the estimator's default
DEMO_PARAMS = dict(hidden_dim=512, batch_size=256, cluster_warmup=10)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m skcueco",
        description=(
            "Fit a CueCoEmbedder without labels, then compare the accuracy of a "
            "logistic-regression probe on a held-out split for CueCo embeddings, "
            "raw inputs and the same network untrained."
        ),
    )
    parser.add_argument("--data", help="a .npy file of images or feature vectors "
                        "(default: scikit-learn's digits)")
    parser.add_argument("--labels", help="a .npy file of labels for the probe "
                        "(required with --data)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    parser.add_argument("--backbone", default="auto", choices=BACKBONE_NAMES,
                        help="backbone network (default: auto)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    parser.add_argument("--n-clusters", type=int, default=10,
                        help="number of centroids (default: 10)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--test-size", type=float, default=0.25,
                        help="held-out fraction for the probe (default: 0.25)")
    parser.add_argument("--random-state", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--save", help="write the fitted embedder here (joblib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def load_data(args):
    if args.data is None:
        digits = load_digits()
        return digits.images, digits.target, "digits (scikit-learn)"
    if args.labels is None:
        raise SystemExit("error: --labels is required with --data (the probe needs labels)")
    X = np.load(args.data, allow_pickle=False)
    y = np.load(args.labels, allow_pickle=False)
    if len(X) != len(y):
        raise SystemExit(f"error: {len(X)} samples in --data but {len(y)} labels")
    return X, y, args.data


def probe_accuracy(Z_train, y_train, Z_test, y_test):
    """Held-out accuracy of a logistic regression on the given features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return probe.fit(Z_train, y_train).score(Z_test, y_test)


def run(args):
    X, y, name = load_data(args)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=args.test_size, random_state=args.random_state, stratify=y
    )
    params = dict(
        DEMO_PARAMS, backbone=args.backbone, max_epochs=args.epochs,
        batch_size=args.batch_size, n_clusters=args.n_clusters, device=args.device,
        random_state=args.random_state, verbose=0 if args.quiet else 1,
    )
    print(f"Data: {name}, {len(X_train)} training and {len(X_test)} held-out samples")

    start = time.perf_counter()
    embedder = CueCoEmbedder(**params).fit(X_train)
    fit_seconds = time.perf_counter() - start
    untrained = CueCoEmbedder(**params)._fit_untrained(X_train)

    flat_train = X_train.reshape(len(X_train), -1)
    flat_test = X_test.reshape(len(X_test), -1)
    rows = [
        ("CueCo embeddings", probe_accuracy(
            embedder.transform(X_train), y_train, embedder.transform(X_test), y_test)),
        ("raw inputs", probe_accuracy(flat_train, y_train, flat_test, y_test)),
        ("untrained network", probe_accuracy(
            untrained.transform(X_train), y_train, untrained.transform(X_test), y_test)),
    ]
    print()
    print(f"{'features':<20} {'probe accuracy':>15}")
    print(f"{'-' * 20} {'-' * 15}")
    for label, acc in rows:
        print(f"{label:<20} {acc:>15.4f}")
    print()
    print(f"fit time: {fit_seconds:.1f} s for {embedder.n_iter_} epochs on "
          f"{embedder.device_} ({type(embedder.encoder_).__name__} backbone, "
          f"{len(embedder.get_feature_names_out())} features)")
    if args.save:
        joblib.dump(embedder, args.save)
        print(f"saved the fitted embedder to {args.save}")
    return rows


def main(argv=None):
    """Entry point of ``python -m skcueco`` and the ``skcueco`` command."""
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

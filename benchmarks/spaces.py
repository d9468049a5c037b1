"""The embedding ``transform`` returns, in each ``embedding_space``, on models already trained.

``benchmarks/clusters.py --models DIR`` keeps every model it fits. This
script loads them again and, for each ``embedding_space`` (``"features"``,
``"projection"`` and ``"joint"``), measures ``transform`` on the same split
and with the same protocols as the quality benchmark
(:func:`skcueco.evaluation.evaluate_embedder`: the standardised linear
probe, the weighted kNN vote with k=200 and k-means NMI), plus the kNN vote
with k=20 and the NMI of ``predict``'s read-out (the clusters of the
neighbourhood graph, then the vote of the nearest training rows) made in
that space, to see which space the clusters are best read in. Nothing is
trained again: the space is read at ``transform`` time. The raw pixels'
probe and kNN head each set's table.

The "probe labels NMI" and "probe labels ACC" columns score the linear
probe's predictions of the test split as if they were clusters: what a
head trained with every label gives, the reference an unsupervised
``predict`` is measured against (no clustering read from that space can be
expected to beat it).

Examples
--------
::

    python benchmarks/clusters.py --datasets digits --epochs 40 --models models/
    python benchmarks/spaces.py --models models/ --out spaces.md
"""

import datetime
import shlex
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusters import GRAPH_NEIGHBOURS, clustering_scores  # noqa: E402
from quality import load_dataset, scaled_inputs  # noqa: E402
from readouts import kept_models, kept_models_cli, knn_accuracy, probe_predictions  # noqa: E402

from skcueco import CueCoEmbedder, _readout  # noqa: E402
from skcueco.evaluation import evaluate_features  # noqa: E402
from skcueco.nn.vote import VOTE_NEIGHBOURS, vote_clusters  # noqa: E402
from skcueco.training.trained import EMBEDDING_SPACES  # noqa: E402

METRICS = {("linear", "accuracy"): "probe", ("knn", "accuracy"): "kNN k=200",
           ("kmeans", "nmi"): "k-means NMI"}
READOUT = "graph read-out NMI"
REFERENCE = ("probe labels NMI", "probe labels ACC")


def scores(Z_train, y_train, Z_test, y_test, seed):
    """``{metric: value}`` of one embedding, as the quality benchmark measures it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = evaluate_features(Z_train, y_train, Z_test, y_test, random_state=seed)
    value = {(p, m): v for p, m, v in quality.itertuples(index=False)}
    row = {name: value[key] for key, name in METRICS.items()}
    row["kNN k=20"] = knn_accuracy(Z_train, y_train, Z_test, y_test, 20)
    labels = clustering_scores(y_test, probe_predictions(Z_train, y_train, Z_test, seed))
    row[REFERENCE[0]], row[REFERENCE[1]] = labels["nmi"], labels["cluster_accuracy"]
    return row


def readout_nmi(Z_train, Z_test, y_test, n_clusters, n_neighbors, seed):
    """NMI of ``predict``'s read-out made on the rows of ``Z_train`` instead of the projections.

    The same steps as the estimator's: a fixed subset of at most
    ``READOUT_ROWS`` unit rows, the clusters of their neighbourhood graph,
    then each test row given the weighted vote of its nearest read rows.
    """
    A = torch.nn.functional.normalize(torch.from_numpy(np.asarray(Z_train, np.float32)), dim=1)
    B = torch.nn.functional.normalize(torch.from_numpy(np.asarray(Z_test, np.float32)), dim=1)
    rows = _readout.readout_rows(len(A), seed)
    if rows is not None:
        A = A[torch.from_numpy(rows)]
    labels = _readout.graph_clusters(A, n_clusters, n_neighbors, seed)
    owners = torch.from_numpy(labels.astype(np.int64))
    predicted = vote_clusters(B, A, owners, n_clusters, VOTE_NEIGHBOURS).numpy()
    return clustering_scores(y_test, predicted)["nmi"]


def measure(path, data, seed):
    X_train, X_test, y_train, y_test, _ = data
    est = CueCoEmbedder.load(path) if path.suffix == ".skc" else joblib.load(path)
    n_clusters = est._trained.centroids.shape[0]
    n_neighbors = est.cluster_graph or GRAPH_NEIGHBOURS
    model_seed = est._seeds().model
    rows = []
    for space in EMBEDDING_SPACES:
        est.set_params(embedding_space=space)
        Z_train, Z_test = est.transform(X_train), est.transform(X_test)
        rows.append({"space": space, **scores(Z_train, y_train, Z_test, y_test, seed),
                     READOUT: readout_nmi(Z_train, Z_test, y_test, n_clusters, n_neighbors,
                                         model_seed)})
    return rows


def run(args):
    rows, cache = [], {}
    for path, match in kept_models(args):
        name, seed = match["dataset"], int(match["seed"])
        key = {"dataset": name, "epochs": int(match["epochs"]), "method": match["method"],
               "seed": seed}
        if name not in cache:
            cache[name] = load_dataset(name, quick=args.quick)
            X_train, X_test, y_train, y_test, kind = cache[name]
            A, B = scaled_inputs(X_train, X_test, kind)
            rows.append({**key, "epochs": 0, "method": "pixels", "seed": 0, "space": "pixels",
                         **scores(A, y_train, B, y_test, 0)})
        for row in measure(path, cache[name], seed):
            rows.append({**key, **row})
        print(f"[{datetime.datetime.now():%H:%M:%S}] {path.name}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def markdown(frame, argv):
    columns = ["probe", "kNN k=200", "kNN k=20", "k-means NMI", READOUT, *REFERENCE]
    lines = [f"# The embedding `transform` returns, by `embedding_space` ({datetime.date.today()})",
             "", f"`python benchmarks/spaces.py {shlex.join(argv)}`", "",
             "Mean ± std over the seeds of each model, on the test split; probe, kNN (k=200) "
             "and k-means NMI as `skcueco.evaluation.evaluate_embedder` measures them; the "
             "graph read-out NMI is `predict`'s read-out made in that space (in the "
             "projection space it is `predict` itself); the probe labels' NMI and ACC score "
             "the probe's test predictions as clusters, the supervised reference for them.", ""]
    pixels = frame[frame.space == "pixels"].set_index("dataset")
    models = frame[frame.space != "pixels"]
    for (name, epochs, method), g in models.groupby(["dataset", "epochs", "method"], sort=True):
        lines += [f"## {name}, {epochs} epochs, {method} ({g.seed.nunique()} seeds)", "",
                  "| space | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        if name in pixels.index:
            px = pixels.loc[name]
            lines.append("| raw pixels | " + " | ".join(
                "" if col in ("k-means NMI", READOUT) else f"{px[col]:.3f}" for col in columns)
                + " |")
        for space in EMBEDDING_SPACES:
            m = g[g.space == space]
            lines.append(f"| {space} | " + " | ".join(
                f"{m[col].mean():.3f} ± {m[col].std(ddof=0):.3f}" for col in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    return kept_models_cli(argv, __doc__, run, markdown)


if __name__ == "__main__":
    main()

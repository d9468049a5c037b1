"""benchmarks/clusters.py: the read-outs it compares are the ones fit produces."""

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def clusters():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("clusters", BENCHMARKS / "clusters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_graph_read_out_of_a_centroid_fit_is_what_the_default_fit_gives(clusters):
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_test = X[:300], X[300:400], y[300:400]
    params = dict(max_epochs=2, batch_size=64, hidden_dim=64, random_state=0, amp=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = CueCoEmbedder(**params, cluster_graph=0).fit(X_train)
        graph = CueCoEmbedder(**params, cluster_graph=10).fit(X_train)
    scores, seconds = clusters.readouts(plain, X_train, X_test, y_test, n_neighbors=10)
    assert seconds > 0
    assert scores["centroids"] == clusters.clustering_scores(y_test, plain.predict(X_test))
    assert scores["graph"] == clusters.clustering_scores(y_test, graph.predict(X_test))
    assert scores["graph"] != scores["centroids"]


def test_quick_run_reports_both_read_outs_and_the_anchors(clusters, tmp_path, capsys):
    out, csv = tmp_path / "t.md", tmp_path / "t.csv"
    frame = clusters.main(["--quick", "--datasets", "digits", "--seeds", "1",
                           "--out", str(out), "--csv", str(csv)])
    methods = set(frame.method)
    assert {"cueco graph", "cueco centroids", "moco graph", "moco centroids",
            "k-means on pixels", "agglomerative on pca", "hdbscan on pixels"} <= methods
    assert frame[["NMI", "ARI", "ACC"]].notna().all().all()
    assert (frame["NMI"].between(0, 1)).all()
    assert "| cueco graph |" in out.read_text()
    assert set(__import__("pandas").read_csv(csv).method) == methods

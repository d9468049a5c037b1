"""CueCoClassifier inside scikit-learn's model-selection and metrics tools.

Pipelines, grid and randomised searches, cross-validation, learning curves,
metrics and displays, on 400 of the 8x8 digits with two-epoch embedders. The
searches that only change the head must not train the embedder again, and
parallel searches must not oversubscribe the CPU with torch threads. The
device is pinned to the CPU: the parallel search compares scores bitwise.
"""

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from scipy.stats import loguniform, uniform
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix
from sklearn.model_selection import (
    GridSearchCV,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_val_score,
    learning_curve,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler

from skcueco import CueCoClassifier, CueCoEmbedder

EMBEDDER_PARAMS = dict(
    max_epochs=2, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=10, cluster_warmup=1, device="cpu", random_state=0,
)
HEAD_EPOCHS = 20
N_SAMPLES = 400
CV = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)


def _embedder(**overrides):
    return CueCoEmbedder(**{**EMBEDDER_PARAMS, **overrides})


def _classifier(embedder=None, **params):
    params = {"head_epochs": HEAD_EPOCHS, "random_state": 0, **params}
    return CueCoClassifier(_embedder() if embedder is None else embedder, **params)


def _to_images(X):
    """Flattened 8x8 digits -> (n_samples, 8, 8) images."""
    return np.asarray(X).reshape(-1, 8, 8)


def _n_clusters(estimator, X, y):
    """Scorer: how many centroids the fitted embedder of a pipeline has."""
    return float(estimator[-1].embedder_.cluster_centers_.shape[0])


def _torch_threads(estimator, X, y):
    """Scorer: torch's intra-op thread count where the scoring runs."""
    return float(torch.get_num_threads())


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:N_SAMPLES], y[:N_SAMPLES]


@pytest.fixture(scope="module")
def split(digits):
    X, y = digits
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def fitted(split):
    X_train, _, y_train, _ = split
    return _classifier().fit(X_train, y_train)


@pytest.fixture
def fit_calls(monkeypatch):
    """Rows of every ``CueCoEmbedder.fit`` call in this process from now on."""
    rows = []
    original = CueCoEmbedder.fit

    def spy(self, X, y=None):
        rows.append(len(X))
        return original(self, X, y)

    monkeypatch.setattr(CueCoEmbedder, "fit", spy)
    return rows


# -- pipelines and searches -----------------------------------------------------------


@pytest.mark.parametrize(
    "step", [MinMaxScaler(), FunctionTransformer(_to_images)],
    ids=["min-max-scaler", "to-images"],
)
def test_pipeline(split, step):
    X_train, X_test, y_train, y_test = split
    pipe = Pipeline([("prep", step), ("clf", _classifier())]).fit(X_train, y_train)
    assert_array_equal(pipe.classes_, np.arange(10))
    assert pipe[-1].n_features_in_ == 64
    assert pipe.predict_proba(X_test).shape == (len(X_test), 10)
    assert pipe.score(X_test, y_test) > 0.5  # chance is 0.1


def test_grid_search_over_embedder_and_head(digits):
    X, y = digits
    pipe = Pipeline([("scale", MinMaxScaler()), ("clf", _classifier())])
    grid = [
        {"clf__embedder__n_clusters": [5, 10]},
        {"clf__embedder__cluster_weight": [0.0], "clf__head_lr": [0.05]},
    ]
    search = GridSearchCV(
        pipe, grid, cv=CV, scoring={"accuracy": "accuracy", "k": _n_clusters},
        refit="accuracy",
    ).fit(X, y)

    results = search.cv_results_
    assert len(results["params"]) == 3
    # each candidate's parameters reached the embedder inside the pipeline
    assert_array_equal(results["mean_test_k"], [5, 10, 10])
    assert np.all(results["mean_test_accuracy"] > 0.5)
    best = search.best_estimator_[-1]
    for name, value in search.best_params_.items():
        assert best.get_params()[name.removeprefix("clf__")] == value
    assert best.embedder_.cluster_centers_.shape[0] == best.embedder_.n_clusters
    assert search.score(X, y) > 0.5


def test_randomized_search(digits):
    X, y = digits
    distributions = {
        "embedder__cluster_weight": uniform(0.0, 2.0),
        "head_lr": loguniform(0.01, 0.3),
    }
    search = RandomizedSearchCV(
        _classifier(), distributions, n_iter=2, cv=CV, random_state=0
    ).fit(X, y)
    params = search.cv_results_["params"]
    assert len(params) == 2
    assert params[0] != params[1]
    assert search.best_estimator_.head_lr == search.best_params_["head_lr"]
    assert search.best_estimator_.embedder_.cluster_weight == pytest.approx(
        search.best_params_["embedder__cluster_weight"]
    )
    assert search.best_score_ > 0.5


def test_cross_val_score(digits):
    X, y = digits
    scores = cross_val_score(_classifier(), X, y, cv=3)
    assert scores.shape == (3,)
    assert np.all((scores > 0.5) & (scores <= 1.0))


def test_learning_curve(digits):
    X, y = digits
    sizes, train_scores, test_scores = learning_curve(
        _classifier(), X, y, train_sizes=[0.5, 1.0], cv=CV
    )
    assert_array_equal(sizes, [100, 200])
    assert train_scores.shape == test_scores.shape == (2, 2)
    assert np.all((test_scores > 0.3) & (test_scores <= 1.0))
    assert np.all(train_scores >= test_scores - 0.1)


# -- metrics ---------------------------------------------------------------------------


def test_classification_report_and_confusion_matrix(fitted, split):
    _, X_test, _, y_test = split
    pred = fitted.predict(X_test)
    report = classification_report(y_test, pred, output_dict=True, zero_division=0)
    assert {str(c) for c in fitted.classes_} <= set(report)
    assert report["accuracy"] == pytest.approx(fitted.score(X_test, y_test))

    cm = confusion_matrix(y_test, pred, labels=fitted.classes_)
    assert cm.shape == (10, 10)
    assert cm.sum() == len(y_test)
    assert np.trace(cm) / cm.sum() == pytest.approx(accuracy_score(y_test, pred))


def test_confusion_matrix_display(fitted, split):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    _, X_test, _, y_test = split
    try:
        display = ConfusionMatrixDisplay.from_estimator(fitted, X_test, y_test)
        assert_array_equal(display.confusion_matrix,
                           confusion_matrix(y_test, fitted.predict(X_test)))
        assert_array_equal(display.display_labels, fitted.classes_)
        assert display.figure_ is not None
    finally:
        plt.close("all")


# -- searches over the head alone do not retrain the embedder -------------------------


def test_search_over_head_with_frozen_embedder(digits, fit_calls):
    X, y = digits
    embedder = _embedder().fit(X)
    history = embedder.history_
    state = {k: v.clone() for k, v in embedder.encoder_.state_dict().items()}
    del fit_calls[:]

    search = GridSearchCV(
        _classifier(FrozenEstimator(embedder)), {"head_lr": [0.01, 0.3]}, cv=CV
    ).fit(X, y)

    assert fit_calls == [], "the frozen embedder was trained during the search"
    assert search.best_estimator_.embedder_.estimator is embedder
    assert embedder.history_ is history
    for name, tensor in embedder.encoder_.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    scores = search.cv_results_["mean_test_score"]
    assert scores[0] != scores[1]  # the head's learning rate mattered


@pytest.mark.parametrize("memory", [False, True], ids=["no-memory", "memory"])
def test_pipeline_memory_fits_embedder_once_per_split(digits, fit_calls, tmp_path, memory):
    X, y = digits
    pipe = Pipeline(
        [("emb", _embedder()), ("head", LogisticRegression(max_iter=200))],
        memory=str(tmp_path) if memory else None,
    )
    search = GridSearchCV(pipe, {"head__C": [0.1, 1.0]}, cv=CV).fit(X, y)

    n_splits = CV.get_n_splits()
    n_candidates = len(search.cv_results_["params"])
    if memory:
        # one embedder per training split, one for the refit on all rows
        assert fit_calls == [N_SAMPLES // 2] * n_splits + [N_SAMPLES]
        assert any(tmp_path.rglob("output.pkl"))
    else:
        assert len(fit_calls) == n_candidates * n_splits + 1
    assert search.best_score_ > 0.5


# -- parallel searches -----------------------------------------------------------------


def test_parallel_grid_search_uses_one_torch_thread_per_worker(digits):
    # joblib limits the worker processes' threads to cpu_count // n_jobs; with
    # n_jobs equal to the number of cores torch must run single-threaded there
    import joblib

    X, y = digits
    n_jobs = 2
    scoring = {"accuracy": "accuracy", "threads": _torch_threads}
    grid = {"head_lr": [0.05, 0.1]}
    parallel = GridSearchCV(
        _classifier(), grid, cv=CV, scoring=scoring, refit="accuracy", n_jobs=n_jobs
    ).fit(X, y)

    expected = max(1, joblib.cpu_count() // n_jobs)
    for split_index in range(CV.get_n_splits()):
        threads = parallel.cv_results_[f"split{split_index}_test_threads"]
        assert_array_equal(threads, expected)

    # the same search in this process, on as many threads, gives the same scores
    torch.set_num_threads(expected)
    sequential = GridSearchCV(
        _classifier(), grid, cv=CV, scoring="accuracy", n_jobs=None
    ).fit(X, y)
    assert_array_equal(parallel.cv_results_["mean_test_accuracy"],
                       sequential.cv_results_["mean_test_score"])

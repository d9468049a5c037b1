"""Tests of CueCoClassifier: the estimator contract, outputs, semi-supervised
fitting, frozen embedders, scikit-learn heads and errors.

The data are 400 of scikit-learn's 8x8 digits (flattened, read as images) and
every embedder trains two short epochs, so a fit takes well under a second on
one CPU core. Classifiers that several tests only read are fitted once per
module. The device is pinned to the CPU so that the bitwise-reproducibility
checks hold on a machine with a GPU too.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from skcueco import CueCoClassifier, CueCoEmbedder
from skcueco.nn.linear_eval import LinearHead

# the embedder of the tests on digits: two epochs of six batches
EMBEDDER_PARAMS = dict(
    max_epochs=2, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=10, cluster_warmup=1, device="cpu", random_state=0,
)
HEAD_EPOCHS = 20
N_SAMPLES = 400

# scikit-learn's checks use as few as a handful of samples and the labels
# {-1, 1}, so their embedder is smaller and -1 must be a class
CHECK_EMBEDDER_PARAMS = dict(
    EMBEDDER_PARAMS, batch_size=16, hidden_dim=32, projection_dim=16, queue_size=32,
    n_clusters=2,
)


def _embedder(**overrides):
    return CueCoEmbedder(**{**EMBEDDER_PARAMS, **overrides})


def _classifier(embedder=None, **params):
    params = {"head_epochs": HEAD_EPOCHS, "random_state": 0, **params}
    return CueCoClassifier(_embedder() if embedder is None else embedder, **params)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:N_SAMPLES], y[:N_SAMPLES]


@pytest.fixture(scope="module")
def fitted(digits):
    """A classifier fitted on the ten digit classes."""
    X, y = digits
    return _classifier().fit(X, y)


@pytest.fixture
def fit_calls(monkeypatch):
    """Number of rows of every ``CueCoEmbedder.fit`` call from now on."""
    rows = []
    original = CueCoEmbedder.fit

    def spy(self, X, y=None):
        rows.append(len(X))
        return original(self, X, y)

    monkeypatch.setattr(CueCoEmbedder, "fit", spy)
    return rows


def _state(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


# -- scikit-learn's estimator contract -----------------------------------------------


@parametrize_with_checks([
    CueCoClassifier(
        CueCoEmbedder(**CHECK_EMBEDDER_PARAMS), head_epochs=HEAD_EPOCHS, unlabeled=None,
        random_state=0,
    )
])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def _reads_minus_one_as_unlabeled(estimator):
    # scikit-learn exempts its own semi-supervised classifiers from this check
    # by name: it trains on the labels {-1, 1}, where -1 marks unlabeled rows
    return {"check_classifiers_classes": "-1 marks unlabeled rows, as in "
                                         "sklearn.semi_supervised"}


@parametrize_with_checks(
    [CueCoClassifier(CueCoEmbedder(**CHECK_EMBEDDER_PARAMS), head_epochs=HEAD_EPOCHS,
                     random_state=0)],
    expected_failed_checks=_reads_minus_one_as_unlabeled,
)
def test_sklearn_compatible_with_unlabeled_rows(estimator, check):
    # the default unlabeled=-1 and the default semi-supervised head
    check(estimator)


# -- outputs ---------------------------------------------------------------------------


def test_multiclass_outputs(fitted, digits):
    X, y = digits
    assert_array_equal(fitted.classes_, np.arange(10))
    assert fitted.n_features_in_ == 64

    pred = fitted.predict(X)
    assert pred.shape == (N_SAMPLES,)
    assert set(np.unique(pred)) <= set(fitted.classes_)

    proba = fitted.predict_proba(X)
    assert proba.shape == (N_SAMPLES, 10)
    assert np.all(proba >= 0)
    assert_allclose(proba.sum(axis=1), 1.0)
    assert_array_equal(fitted.classes_[proba.argmax(axis=1)], pred)

    scores = fitted.decision_function(X)
    assert scores.shape == (N_SAMPLES, 10)
    assert_array_equal(fitted.classes_[scores.argmax(axis=1)], pred)

    score = fitted.score(X, y)
    assert score == pytest.approx(np.mean(pred == y))
    assert score > 0.5  # chance is 0.1


def test_fitted_embedder_and_head(fitted, digits):
    X, _ = digits
    assert isinstance(fitted.embedder_, CueCoEmbedder)
    assert fitted.embedder_ is not fitted.embedder
    assert not hasattr(fitted.embedder, "encoder_"), "the embedder parameter was fitted"
    assert fitted.embedder_.n_features_in_ == 64
    assert fitted.device_ == fitted.embedder_.device_

    assert isinstance(fitted.head_.module_, LinearHead)
    assert not fitted.head_.module_.training
    n_features = fitted.embedder_.transform(X[:2]).shape[1]
    assert fitted.head_.module_.linear.in_features == n_features
    assert fitted.head_.module_.linear.out_features == 10


def test_string_labels(digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                      "eight", "nine"])
    y_str = names[y]
    clf = _classifier().fit(X, y_str)

    # sorted order ("eight", "five", ...) differs from the digit order
    assert_array_equal(clf.classes_, np.sort(names))
    pred = clf.predict(X)
    assert pred.dtype.kind == "U"
    assert set(pred) <= set(names)
    assert np.mean(pred == y_str) > 0.5

    proba = clf.predict_proba(X)
    assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    # column j is the probability of classes_[j]: the true class gets most mass
    true_column = np.searchsorted(clf.classes_, y_str)
    assert proba[np.arange(N_SAMPLES), true_column].mean() > 0.5


def test_integer_labels_that_are_not_indices(digits):
    X, y = digits
    y_sparse = 10 * y + 3
    clf = _classifier().fit(X, y_sparse)
    assert_array_equal(clf.classes_, np.arange(10) * 10 + 3)
    pred = clf.predict(X)
    assert pred.dtype.kind == "i"
    assert set(pred) <= set(clf.classes_)
    assert np.mean(pred == y_sparse) > 0.5


def test_binary_outputs(digits):
    X, y = digits
    mask = y < 2
    X2, y2 = X[mask], np.where(y[mask] == 0, "zero", "one")
    clf = _classifier().fit(X2, y2)
    assert_array_equal(clf.classes_, ["one", "zero"])

    scores = clf.decision_function(X2)
    assert scores.shape == (len(X2),)
    # a positive score means classes_[1], as in scikit-learn
    assert_array_equal(clf.classes_[(scores > 0).astype(int)], clf.predict(X2))

    proba = clf.predict_proba(X2)
    assert proba.shape == (len(X2), 2)
    assert_allclose(proba.sum(axis=1), 1.0)
    assert_array_equal((proba[:, 1] > 0.5), scores > 0)
    assert clf.score(X2, y2) > 0.9


def test_image_array_equals_flattened_rows(digits, fitted):
    X, y = digits
    clf = _classifier().fit(X.reshape(-1, 8, 8), y)
    assert clf.n_features_in_ == 64
    assert_array_equal(clf.predict_proba(X.reshape(-1, 8, 8)), fitted.predict_proba(X))


def test_dataframe_input(digits):
    pd = pytest.importorskip("pandas")
    X, y = digits
    df = pd.DataFrame(X, columns=[f"pixel_{i}" for i in range(64)])
    clf = _classifier().fit(df, y)
    assert_array_equal(clf.feature_names_in_, df.columns)
    assert clf.predict(df).shape == (N_SAMPLES,)
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(df.rename(columns={"pixel_0": "other"}))


def test_not_fitted(digits):
    X, _ = digits
    clf = _classifier()
    for method in ("predict", "predict_proba", "decision_function"):
        with pytest.raises(NotFittedError):
            getattr(clf, method)(X)


# -- semi-supervised fitting -----------------------------------------------------------


def _half_unlabeled(y):
    y_semi = y.copy()
    y_semi[::2] = -1
    return y_semi


def test_unlabeled_rows_pretrain_the_embedder_only(digits, fit_calls):
    X, y = digits
    y_semi = _half_unlabeled(y)
    labeled = y_semi != -1
    clf = _classifier(head="linear").fit(X, y_semi)

    assert fit_calls == [N_SAMPLES]
    assert clf.embedder_.n_features_in_ == 64
    assert -1 not in clf.classes_
    assert_array_equal(clf.classes_, np.arange(10))
    assert clf.head_.module_.linear.out_features == 10
    # the head's frozen standardisation is that of the labeled rows' features
    features = clf.embedder_.transform(X[labeled])
    assert_allclose(clf.head_.module_.mean.numpy(), features.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        clf.head_.module_.mean.numpy(), clf.embedder_.transform(X).mean(axis=0), rtol=1e-3
    )
    assert set(clf.predict(X)) <= set(range(10))
    assert clf.score(X[labeled], y[labeled]) > 0.5


def test_unlabeled_rows_skip_a_scikit_learn_head(digits):
    X, y = digits
    y_semi = _half_unlabeled(y)
    clf = _classifier(head=KNeighborsClassifier()).fit(X, y_semi)
    assert clf.head_.n_samples_fit_ == np.sum(y_semi != -1)
    assert_array_equal(clf.head_.classes_, np.arange(10))


def test_custom_unlabeled_marker(digits, fit_calls):
    X, y = digits
    y_semi = y.copy()
    y_semi[::2] = 99
    clf = _classifier(unlabeled=99).fit(X, y_semi)
    assert fit_calls == [N_SAMPLES]
    assert_array_equal(clf.classes_, np.arange(10))


def test_unlabeled_none_makes_minus_one_a_class(digits, fit_calls):
    X, y = digits
    y_semi = _half_unlabeled(y)
    clf = _classifier(unlabeled=None).fit(X, y_semi)
    assert fit_calls == [N_SAMPLES]
    assert_array_equal(clf.classes_, np.arange(-1, 10))
    assert clf.head_.module_.linear.out_features == 11
    assert_allclose(clf.head_.module_.mean.numpy(), clf.embedder_.transform(X).mean(axis=0),
                    rtol=1e-5, atol=1e-6)
    assert clf.predict_proba(X).shape == (N_SAMPLES, 11)


# -- a frozen embedder is never trained ------------------------------------------------


@pytest.mark.parametrize("head_augmentation", [False, True])
def test_head_training_leaves_frozen_embedder_untouched(digits, head_augmentation,
                                                       fit_calls):
    X, y = digits
    embedder = _embedder().fit(X)
    del fit_calls[:]
    encoder_state = _state(embedder.encoder_)
    projector_state = _state(embedder._trained.projector)
    history, n_iter = embedder.history_, embedder.n_iter_
    centers = embedder.cluster_centers_.copy()
    Z = embedder.transform(X)

    frozen = FrozenEstimator(embedder)
    clf = _classifier(frozen, head_augmentation=head_augmentation).fit(X, y)

    assert fit_calls == []
    assert clf.embedder_ is frozen and clf.embedder_.estimator is embedder
    assert embedder.history_ is history and embedder.n_iter_ == n_iter
    assert_array_equal(embedder.cluster_centers_, centers)
    assert not embedder.encoder_.training
    after = embedder.encoder_.state_dict()
    assert after.keys() == encoder_state.keys()
    for name, tensor in encoder_state.items():
        # batch-norm running statistics included
        assert torch.equal(after[name], tensor), name
    for name, tensor in _state(embedder._trained.projector).items():
        assert torch.equal(projector_state[name], tensor), name
    assert_array_equal(embedder.transform(X), Z)
    assert clf.score(X, y) > 0.5


def test_frozen_embedder_fitted_on_a_dataframe(digits):
    pd = pytest.importorskip("pandas")
    X, y = digits
    df = pd.DataFrame(X, columns=[f"pixel_{i}" for i in range(64)])
    frozen = FrozenEstimator(_embedder().fit(df))
    with warnings.catch_warnings():
        # e.g. "X does not have valid feature names, but CueCoEmbedder was fitted
        # with feature names": the classifier must hand the embedder what it knows
        warnings.simplefilter("error", UserWarning)
        clf = _classifier(frozen).fit(df, y)
        clf.predict_proba(df)


def test_frozen_embedder_features_feed_the_head(digits):
    X, y = digits
    frozen = FrozenEstimator(_embedder().fit(X))
    clf = _classifier(frozen, head=LogisticRegression(max_iter=500)).fit(X, y)
    Z = frozen.transform(X)
    assert_array_equal(clf.predict(X), clf.head_.predict(Z))
    assert_allclose(clf.predict_proba(X), clf.head_.predict_proba(Z))


# -- scikit-learn heads ----------------------------------------------------------------


def test_scikit_learn_head_is_cloned_and_used(digits):
    X, y = digits
    head = LogisticRegression(max_iter=500)
    clf = _classifier(head=head).fit(X, y)

    assert not hasattr(head, "coef_"), "the head parameter was fitted"
    assert isinstance(clf.head_, LogisticRegression) and clf.head_ is not head
    Z = clf.embedder_.transform(X)
    assert clf.head_.coef_.shape == (10, Z.shape[1])
    assert_array_equal(clf.classes_, clf.head_.classes_)
    assert_array_equal(clf.predict(X), clf.head_.predict(Z))
    assert_allclose(clf.predict_proba(X), clf.head_.predict_proba(Z))
    assert_allclose(clf.decision_function(X), clf.head_.decision_function(Z))
    assert clf.score(X, y) > 0.5


def test_method_availability_follows_the_head(digits):
    X, y = digits
    # the linear head has both
    assert hasattr(_classifier(), "predict_proba")
    assert hasattr(_classifier(), "decision_function")

    svc = _classifier(head=SVC())
    assert not hasattr(svc, "predict_proba")
    svc.fit(X, y)
    assert not hasattr(svc, "predict_proba")
    assert svc.decision_function(X).shape == (N_SAMPLES, 10)

    svc_proba = _classifier(head=SVC(probability=True))
    assert hasattr(svc_proba, "predict_proba")

    knn = _classifier(head=KNeighborsClassifier()).fit(X, y)
    assert not hasattr(knn, "decision_function")
    assert knn.predict_proba(X).shape == (N_SAMPLES, 10)


# -- randomness ------------------------------------------------------------------------


def test_same_random_state_same_probabilities(digits):
    X, y = digits
    proba = [_classifier(random_state=0).fit(X, y).predict_proba(X) for _ in range(2)]
    assert_array_equal(proba[0], proba[1])


def test_random_state_seeds_the_head(digits):
    # the embedder has its own random_state: only the head's seed differs
    X, y = digits
    proba = [_classifier(random_state=seed).fit(X, y).predict_proba(X)
             for seed in (0, 1)]
    assert not np.allclose(proba[0], proba[1])


def test_random_state_seeds_the_default_embedder(digits, monkeypatch):
    X, y = digits
    seeds = []
    original = CueCoEmbedder.fit

    def small_fit(self, X, y=None):
        # the default embedder is far too big for a test: shrink it, keep its seed
        seeds.append(self.random_state)
        small = {k: v for k, v in EMBEDDER_PARAMS.items() if k != "random_state"}
        return original(self.set_params(**small), X, y)

    monkeypatch.setattr(CueCoEmbedder, "fit", small_fit)
    proba = [CueCoClassifier(head_epochs=HEAD_EPOCHS, random_state=seed).fit(X, y)
             .predict_proba(X) for seed in (0, 0, 1)]
    assert all(isinstance(seed, int) for seed in seeds)
    assert seeds[0] == seeds[1] != seeds[2]
    assert_array_equal(proba[0], proba[1])


# -- head augmentation -----------------------------------------------------------------


def test_head_augmentation(digits):
    X, y = digits
    plain = _classifier().fit(X, y)
    augmented = _classifier(head_augmentation=True).fit(X, y)
    again = _classifier(head_augmentation=True).fit(X, y)
    # same embedder weights (same seed): only the head's training differs
    assert torch.equal(plain.embedder_.encoder_.state_dict()["features.0.0.weight"],
                       augmented.embedder_.encoder_.state_dict()["features.0.0.weight"])

    p_plain, p_aug = plain.predict_proba(X), augmented.predict_proba(X)
    assert not np.allclose(p_plain, p_aug, atol=1e-3)
    assert_array_equal(p_aug, again.predict_proba(X))
    assert_allclose(p_aug.sum(axis=1), 1.0)
    assert augmented.score(X, y) > 0.5


# -- errors ------------------------------------------------------------------------------


def _single_class(y):
    return np.zeros_like(y)


def _single_labeled_class(y):
    return np.where(np.arange(len(y)) % 2 == 0, 3, -1)


def _nan_label(y):
    y = y.astype(float)
    y[5] = np.nan
    return y


@pytest.mark.parametrize(
    "make_y, error, match",
    [
        (lambda y: y[:-1], ValueError, "inconsistent numbers of samples"),
        (_single_class, ValueError, "only 1 class"),
        (_single_labeled_class, ValueError, "only 1 class"),
        (lambda y: np.full_like(y, -1), ValueError, "All rows are unlabeled"),
        (lambda y: np.linspace(0, 1, len(y)), ValueError, "Unknown label type"),
        (_nan_label, ValueError, "NaN"),
        (lambda y: None, ValueError, "requires y to be passed"),
    ],
    ids=["wrong-length", "one-class", "one-labeled-class", "all-unlabeled",
         "continuous", "nan", "none"],
)
def test_bad_targets_fail_before_pretraining(digits, fit_calls, make_y, error, match):
    X, y = digits
    clf = _classifier()
    with pytest.raises(error, match=match):
        clf.fit(X, make_y(y))
    assert fit_calls == [], "the embedder was trained before y was checked"
    assert not hasattr(clf, "classes_")


def test_embedder_without_cueco_internals_gives_a_clear_error(digits):
    # the parameter constraint accepts any transformer, but fit reads
    # CueCoEmbedder attributes (device_, encoder_, ...) from it
    X, y = digits
    clf = _classifier(PCA(n_components=8), head=LogisticRegression())
    with pytest.raises((TypeError, ValueError), match="embedder"):
        clf.fit(X, y)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(head_epochs=0), "head_epochs"),
        (dict(head="foo"), "'head' parameter"),
        (dict(head_lr=0.0), "head_lr"),
        (dict(head_batch_size=0), "head_batch_size"),
        (dict(head_n_neighbors=0), "head_n_neighbors"),
        (dict(head_alpha=1.0), "head_alpha"),
        (dict(head_alpha=0.0), "head_alpha"),
        (dict(unlabeled="none"), "unlabeled"),
        (dict(embedder="cueco"), "'embedder' parameter"),
    ],
)
def test_invalid_parameters(digits, fit_calls, params, match):
    X, y = digits
    with pytest.raises(InvalidParameterError, match=match):
        _classifier(**params).fit(X, y)
    assert fit_calls == []


def test_head_given_as_a_class_is_refused_before_pretraining(monkeypatch):
    from sklearn.linear_model import LogisticRegression

    calls = []
    monkeypatch.setattr(CueCoEmbedder, "fit", lambda self, X, y=None: calls.append(1))
    X = np.random.default_rng(0).normal(size=(20, 4))
    y = np.arange(20) % 2
    with pytest.raises(TypeError, match=r"LogisticRegression\(\)"):
        CueCoClassifier(head=LogisticRegression).fit(X, y)
    assert calls == []  # no time spent pretraining


def test_failed_refit_keeps_the_previous_classifier(fitted, digits):
    X, y = digits
    clf = copy.deepcopy(fitted)
    proba = clf.predict_proba(X)
    embedder, head = clf.embedder_, clf.head_

    class FailingHead(LogisticRegression):
        def fit(self, X, y):
            raise RuntimeError("the head failed")

    # the embedder trains, then the head fails: no new embedder with the old head
    clf.set_params(head=FailingHead())
    with pytest.raises(RuntimeError, match="the head failed"):
        clf.fit(X, y)
    assert clf.embedder_ is embedder and clf.head_ is head
    assert_array_equal(clf.predict_proba(X), proba)
    clf.set_params(head="propagation")
    with pytest.raises(ValueError, match="only 1 class"):
        clf.fit(X, np.zeros_like(y))
    assert_array_equal(clf.predict_proba(X), proba)

"""Tests of the semi-supervised heads of CueCoClassifier: the built-in
``head="propagation"`` and scikit-learn's semi-supervised classifiers, which
both learn from the embeddings of the unlabeled rows.

Same data and tiny embedders as ``test_classifier.py``: 400 digits, two
epochs, CPU.
"""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

from skcueco import CueCoClassifier, CueCoEmbedder
from skcueco.training.linear_probe import LinearProbe
from skcueco.training.semi_supervised import PropagationProbe, propagate_labels

EMBEDDER_PARAMS = dict(
    max_epochs=2, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=10, cluster_warmup=1, device="cpu", random_state=0,
)
HEAD_EPOCHS = 20
N_SAMPLES = 400
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:N_SAMPLES], y[:N_SAMPLES]


@pytest.fixture(scope="module")
def frozen(digits):
    X, _ = digits
    return FrozenEstimator(CueCoEmbedder(**EMBEDDER_PARAMS).fit(X))


def _few_labels(y, every=10):
    """y with one row in ``every`` labeled, the rest -1 (every class kept)."""
    y_semi = np.full_like(y, -1)
    y_semi[::every] = y[::every]
    return y_semi


def _classifier(embedder, **params):
    return CueCoClassifier(embedder, **{"head_epochs": HEAD_EPOCHS, "random_state": 0,
                                        **params})


# -- label propagation ------------------------------------------------------------------


def _two_blobs(n=40, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    centers = np.array([[5.0, 0.0, 0.0], [-5.0, 0.0, 0.0]])
    Z = np.concatenate([centers[0] + rng.normal(scale=scale, size=(n, 3)),
                        centers[1] + rng.normal(scale=scale, size=(n, 3))])
    y = np.repeat([0, 1], n)
    return Z, y


def test_propagation_spreads_one_label_per_cluster():
    Z, y = _two_blobs()
    labeled = np.zeros(len(y), dtype=bool)
    labeled[[0, 40]] = True
    dist = propagate_labels(Z, y, labeled, 2, n_neighbors=5, alpha=0.95, device=CPU)
    assert dist.shape == (80, 2)
    assert_allclose(dist.sum(axis=1), 1.0)
    assert np.all(dist >= 0)
    assert_array_equal(dist.argmax(axis=1), y)


def test_propagation_balances_classes_with_unequal_label_counts():
    # class 0 has nine labels, class 1 one: without balancing the seeds,
    # class 0's mass would flood the rows near the single label of class 1
    Z, y = _two_blobs()
    labeled = np.zeros(len(y), dtype=bool)
    labeled[:9] = True
    labeled[40] = True
    dist = propagate_labels(Z, y, labeled, 2, n_neighbors=10, alpha=0.99, device=CPU)
    assert_array_equal(dist.argmax(axis=1), y)


def test_rows_no_label_reaches_are_uniform():
    # two components with no edge between them; labels only in the first
    Z, y = _two_blobs(n=10, scale=0.1)
    Z[:, 1:] = Z[:, :1]  # every dimension separates the blobs, even standardised
    labeled = np.zeros(len(y), dtype=bool)
    labeled[[0, 1]] = True
    codes = np.array([0, 1] + [0] * 18)
    dist = propagate_labels(Z, codes, labeled, 2, n_neighbors=3, alpha=0.9, device=CPU)
    # opposite blobs have negative cosine similarity, hence no edge
    assert_allclose(dist[10:], 0.5)
    assert not np.allclose(dist[:10], 0.5)


def test_propagation_probe_weights_and_transduction():
    Z, y = _two_blobs()
    labeled = np.zeros(len(y), dtype=bool)
    labeled[[0, 1, 40, 41]] = True
    y_in = np.where(labeled, y, -1)
    probe = PropagationProbe(n_neighbors=5, alpha=0.95, epochs=20, lr=0.1, batch_size=16,
                             weight_decay=0.0, device=CPU, seed=0).fit(Z, y_in, labeled=labeled)
    assert_array_equal(probe.classes_, [0, 1])
    assert_array_equal(probe.transduction_, y)
    assert_array_equal(probe.sample_weight_[labeled], 1.0)
    assert np.all((probe.sample_weight_ >= 0) & (probe.sample_weight_ <= 1))
    # certainty is lower where the distribution is flatter
    margin = np.abs(probe.label_distributions_[:, 0] - 0.5)
    unl = ~labeled
    assert np.corrcoef(margin[unl], probe.sample_weight_[unl])[0, 1] > 0.9
    # the linear layer saw every row: its frozen standardisation is theirs
    assert_allclose(probe.module_.mean.numpy(), Z.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert_array_equal(probe.predict(Z), y)


def test_zero_weights_train_nothing():
    # a quarter of the rows carry the wrong label: weighted 0 they leave the
    # layer as sure as clean data would; counted, they pull its margin down
    Z, y = _two_blobs()
    wrong = np.where(np.arange(len(y)) % 4 == 0, 1 - y, y)
    weight = np.where(wrong == y, 1.0, 0.0)
    params = dict(epochs=30, lr=0.1, batch_size=16, weight_decay=0.0, device=CPU, seed=0)
    ignored = LinearProbe(**params).fit(Z, wrong, sample_weight=weight)
    counted = LinearProbe(**params).fit(Z, wrong)
    w_ignored = ignored.module_.linear.weight.detach()
    w_counted = counted.module_.linear.weight.detach()
    # the wrong rows pull the counted layer's margin down
    margin = lambda probe: np.abs(probe.decision_function(Z)).mean()
    assert margin(ignored) > margin(counted)
    assert not torch.allclose(w_ignored, w_counted)


# -- head="propagation" in CueCoClassifier -------------------------------------------------


def test_default_head_is_propagation():
    assert CueCoClassifier().head == "propagation"


def test_propagation_head_learns_from_unlabeled_rows(digits, frozen):
    X, y = digits
    y_semi = _few_labels(y)
    labeled = y_semi != -1
    clf = _classifier(frozen).fit(X, y_semi)
    linear = _classifier(frozen, head="linear").fit(X, y_semi)

    assert isinstance(clf.head_, PropagationProbe)
    assert_array_equal(clf.classes_, np.arange(10))
    assert clf.head_.label_distributions_.shape == (N_SAMPLES, 10)
    assert_array_equal(clf.head_.transduction_[labeled], y[labeled])
    # the layer's standardisation comes from every row, not the 40 labeled ones
    Z = frozen.transform(X)
    assert_allclose(clf.head_.module_.mean.numpy(), Z.mean(axis=0), rtol=1e-4, atol=1e-5)
    # propagated labels are mostly right, and the head beats the linear one
    assert np.mean(clf.head_.transduction_[~labeled] == y[~labeled]) > 0.6
    unl = ~labeled
    assert clf.score(X[unl], y[unl]) > linear.score(X[unl], y[unl])

    proba = clf.predict_proba(X)
    assert_allclose(proba.sum(axis=1), 1.0)
    assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X))
    assert clf.decision_function(X).shape == (N_SAMPLES, 10)


def test_propagation_without_unlabeled_rows_is_the_linear_head(digits, frozen):
    X, y = digits
    prop = _classifier(frozen).fit(X, y)
    linear = _classifier(frozen, head="linear").fit(X, y)
    assert type(prop.head_) is LinearProbe
    assert_array_equal(prop.predict_proba(X), linear.predict_proba(X))


def test_propagation_parameters_change_the_head(digits, frozen):
    X, y = digits
    y_semi = _few_labels(y)
    base = _classifier(frozen).fit(X, y_semi)
    again = _classifier(frozen).fit(X, y_semi)
    assert_array_equal(base.predict_proba(X), again.predict_proba(X))
    for params in (dict(head_n_neighbors=15), dict(head_alpha=0.5)):
        other = _classifier(frozen, **params).fit(X, y_semi)
        assert not np.allclose(other.head_.label_distributions_,
                               base.head_.label_distributions_), params


def test_propagation_with_head_augmentation(digits, frozen):
    X, y = digits
    y_semi = _few_labels(y)
    plain = _classifier(frozen).fit(X, y_semi)
    augmented = _classifier(frozen, head_augmentation=True).fit(X, y_semi)
    assert_array_equal(augmented.head_.transduction_, plain.head_.transduction_)
    assert not np.allclose(augmented.predict_proba(X), plain.predict_proba(X), atol=1e-3)
    assert augmented.score(X, y) > 0.5


# -- scikit-learn semi-supervised heads --------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("head", [
    LabelSpreading(kernel="knn", n_neighbors=5),
    make_pipeline(StandardScaler(), LabelSpreading(kernel="knn", n_neighbors=5)),
    SelfTrainingClassifier(LogisticRegression(max_iter=300), max_iter=2),
], ids=["LabelSpreading", "pipeline", "SelfTrainingClassifier"])
def test_semi_supervised_head_gets_every_row(digits, frozen, head):
    X, y = digits
    y_semi = _few_labels(y)
    clf = _classifier(frozen, head=head).fit(X, y_semi)
    fitted = clf.head_[-1] if hasattr(clf.head_, "steps") else clf.head_
    assert_array_equal(clf.classes_, np.arange(10))
    assert_array_equal(fitted.classes_, np.arange(10))
    if isinstance(fitted, LabelSpreading):
        assert fitted.transduction_.shape == (N_SAMPLES,)
        assert_array_equal(fitted.transduction_[y_semi != -1], y[y_semi != -1])
    else:
        # the self-training loop saw the unlabeled rows: some were labeled by it
        assert fitted.transduction_.shape == (N_SAMPLES,)
        assert np.sum(fitted.labeled_iter_ > 0) > 0
    Z = frozen.transform(X)
    assert_array_equal(clf.predict(X), clf.head_.predict(Z))


def test_custom_unlabeled_marker_reaches_the_head_as_minus_one(digits, frozen):
    X, y = digits
    y_semi = np.where(_few_labels(y) == -1, 99, y)
    clf = _classifier(frozen, head=LabelSpreading(kernel="knn", n_neighbors=5),
                      unlabeled=99).fit(X, y_semi)
    assert_array_equal(clf.classes_, np.arange(10))
    assert_array_equal(clf.head_.classes_, np.arange(10))
    assert clf.head_.label_distributions_.shape == (N_SAMPLES, 10)


def test_minus_one_as_a_class_is_refused_by_a_semi_supervised_head(digits, frozen):
    X, y = digits
    y_minus = np.where(y == 0, -1, y)
    clf = _classifier(frozen, head=LabelSpreading(), unlabeled=None)
    with pytest.raises(ValueError, match="-1 is one of the classes"):
        clf.fit(X, y_minus)
    assert not hasattr(clf, "classes_")


def test_non_semi_supervised_head_sees_labeled_rows_only(digits, frozen):
    X, y = digits
    y_semi = _few_labels(y)
    clf = _classifier(frozen, head=LogisticRegression(max_iter=300)).fit(X, y_semi)
    assert clf.head_.n_features_in_ == frozen.transform(X[:1]).shape[1]
    assert_array_equal(clf.classes_, np.arange(10))

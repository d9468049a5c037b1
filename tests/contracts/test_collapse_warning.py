"""When ``fit`` warns that training collapsed, and where the warning points."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skcueco import CueCoClassifier, CueCoEmbedder
from skcueco.training.run import TrainingCollapseWarning, check_collapse


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400], y[:400]


def _collapsing(**params):
    # lr=50 ends at the chance loss with coinciding projections (400 digits,
    # 4 clusters: 100 samples per cluster)
    defaults = dict(hidden_dim=32, projection_dim=16, batch_size=64, max_epochs=5,
                    n_clusters=4, lr=50.0, random_state=0, device="cpu")
    return CueCoEmbedder(**{**defaults, **params})


def _collapse_warnings(record):
    return [w for w in record if issubclass(w.category, TrainingCollapseWarning)]


def test_one_cluster_is_judged_from_fifty_samples_per_cluster_on():
    # 2 clusters: 99 samples are too few to judge, 100 enough
    for n, expected in ((99, 0), (100, 1)):
        labels = torch.zeros(n, dtype=torch.long)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            check_collapse([{"contrastive": 1.0}], 100, 64, labels, 2)
        assert len(_collapse_warnings(record)) == expected, n


def test_loss_at_chance_is_judged_from_fifty_samples_per_cluster_on():
    chance = np.log(1 + 100)
    history = [{"contrastive": chance}]
    for n, expected in ((149, 0), (150, 1)):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            check_collapse(history, 100, 64, None, 3, 0.999, n_samples=n)
        assert len(_collapse_warnings(record)) == expected, n


def test_three_images_do_not_warn():
    # the README's three-image example, as arrays: 2 clusters of 3 images
    # cannot be judged, whatever the training did
    X = np.stack([np.full((16, 16, 3), c, np.uint8) for c in (200, 120, 90)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingCollapseWarning)
        for lr in (None, 50.0):
            params = {} if lr is None else {"lr": lr}
            CueCoEmbedder(n_clusters=2, max_epochs=3, hidden_dim=16, projection_dim=8,
                          device="cpu", random_state=0, **params).fit(X)


def test_the_warning_points_at_the_users_fit_call(digits):
    X, y = digits
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line_of_next_statement()
        _collapsing().fit(X)
    [w] = _collapse_warnings(record)
    assert w.filename == __file__
    assert w.lineno == line


def test_fit_predict_and_the_classifier_point_at_the_users_call(digits):
    X, y = digits
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line_of_next_statement()
        _collapsing().fit_predict(X)
    [w] = _collapse_warnings(record)
    assert (w.filename, w.lineno) == (__file__, line)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line_of_next_statement()
        CueCoClassifier(_collapsing()).fit(X, y)
    found = _collapse_warnings(record)
    assert found
    assert {(w.filename, w.lineno) for w in found} == {(__file__, line)}


def test_a_direct_call_points_at_its_caller():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line_of_next_statement()
        check_collapse([{"contrastive": 1.0}], 100, 64, torch.zeros(100, dtype=torch.long), 2)
    [w] = _collapse_warnings(record)
    assert (w.filename, w.lineno) == (__file__, line)


def _line_of_next_statement():
    import sys

    return sys._getframe(1).f_lineno + 1

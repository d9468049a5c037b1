"""cluster_positives="neighbour": while same-cluster negatives are left out, a
query's positive is the nearest queue key of its cluster.

Fits use 300 digits, batches of 64 and 4 epochs on the CPU (warm-up 1 epoch),
so the negatives are left out, and neighbours may be positives, in epochs 2
and 3.
"""

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from sklearn.utils._param_validation import InvalidParameterError

from skcueco import CueCoEmbedder
from skcueco.callbacks import Callback, Checkpoint
from skcueco.nn.model import CueCoModel

PARAMS = dict(
    max_epochs=4, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=5, cluster_warmup=1, cluster_ramp=0, random_state=0, device="cpu",
)


def params(**overrides):
    return {**PARAMS, **overrides}


@pytest.fixture(scope="module")
def X():
    return load_digits().data[:300]


@pytest.fixture(scope="module")
def neighbours(X):
    return CueCoEmbedder(**params(cluster_positives="neighbour")).fit(X)


@pytest.fixture(scope="module")
def views(X):
    return CueCoEmbedder(**params(cluster_positives="view")).fit(X)


class EpochSpy(Callback):
    def __init__(self):
        self.epoch = None

    def on_epoch_begin(self, trainer, epoch):
        self.epoch = epoch


def test_neighbours_are_positives_only_while_negatives_are_left_out(X, monkeypatch):
    spy, seen = EpochSpy(), {}
    original = CueCoModel.training_step

    def recording(self, v1, v2, cluster_weight=0.0, **kwargs):
        seen.setdefault(spy.epoch, set()).add(kwargs.get("neighbour_positives", False))
        return original(self, v1, v2, cluster_weight, **kwargs)

    monkeypatch.setattr(CueCoModel, "training_step", recording)
    CueCoEmbedder(**params(callbacks=[spy], cluster_positives="neighbour")).fit(X)
    assert seen == {0: {False}, 1: {False}, 2: {True}, 3: {True}}
    seen.clear()
    CueCoEmbedder(**params(callbacks=[spy], cluster_positives="neighbour",
                           cluster_negatives="keep")).fit(X)
    assert seen == {0: {False}, 1: {False}, 2: {False}, 3: {False}}


def test_neighbour_positives_change_the_training_reproducibly(neighbours, views, X):
    assert not np.array_equal(neighbours.transform(X), views.transform(X))
    again = CueCoEmbedder(**params(cluster_positives="neighbour")).fit(X)
    assert_array_equal(again.transform(X), neighbours.transform(X))
    assert_array_equal(again.predict(X), neighbours.predict(X))
    assert np.isfinite(neighbours.transform(X)).all()
    assert neighbours.get_params()["cluster_positives"] == "neighbour"


def test_without_left_out_negatives_neighbours_change_nothing(X):
    kept = CueCoEmbedder(**params(cluster_negatives="keep")).fit(X)
    kept_neighbours = CueCoEmbedder(**params(cluster_negatives="keep",
                                             cluster_positives="neighbour")).fit(X)
    assert_array_equal(kept_neighbours.transform(X), kept.transform(X))


def test_resume_with_neighbour_positives_equals_the_uninterrupted_run(
        neighbours, X, tmp_path, stop_after):
    CueCoEmbedder(**params(cluster_positives="neighbour",
                           callbacks=[Checkpoint(tmp_path, keep_last=5), stop_after(3)])).fit(X)
    resumed = CueCoEmbedder(**params(cluster_positives="neighbour")).fit(
        X, resume_from=tmp_path / "epoch-0003.pt")
    assert_array_equal(resumed.transform(X), neighbours.transform(X))
    # the setting shapes the training: a run resumed with the other one is refused
    with pytest.raises(ValueError, match="cluster_positives"):
        CueCoEmbedder(**params(cluster_positives="view")).fit(
            X, resume_from=tmp_path / "epoch-0003.pt")


@pytest.mark.parametrize("value", ["neighbours", "key", True, None])
def test_bad_cluster_positives_is_refused_by_name(X, value):
    with pytest.raises(InvalidParameterError, match="cluster_positives"):
        CueCoEmbedder(**params(cluster_positives=value)).fit(X)

"""cluster_negatives="drop": a query's cluster is left out of its negatives from half-way on;
cluster_positives="neighbour": meanwhile its positive may be the nearest queue key of its cluster.

Fits use 300 digits, batches of 64 and 4 epochs on the CPU (warm-up 1
epoch), so the negatives of a query's cluster are left out in epochs 2 and 3
(``DROP_NEGATIVES_FRACTION`` of 4 epochs).
"""

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from sklearn.utils._param_validation import InvalidParameterError

from skcueco import CueCoEmbedder
from skcueco.callbacks import Callback, Checkpoint
from skcueco.nn.model import CueCoModel
from skcueco.nn.queue import UNLABELLED
from skcueco.training.run import DROP_NEGATIVES_FRACTION

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
def dropped(X):
    return CueCoEmbedder(**params(cluster_negatives="drop")).fit(X)


class EpochSpy(Callback):
    def __init__(self):
        self.epoch = None

    def on_epoch_begin(self, trainer, epoch):
        self.epoch = epoch


def _flags_by_epoch(X, monkeypatch, **overrides):
    """{epoch: set of drop_cluster_negatives values its steps passed the model}."""
    spy, seen = EpochSpy(), {}
    original = CueCoModel.training_step

    def recording(self, v1, v2, cluster_weight=0.0, **kwargs):
        seen.setdefault(spy.epoch, set()).add(kwargs.get("drop_cluster_negatives", False))
        return original(self, v1, v2, cluster_weight, **kwargs)

    monkeypatch.setattr(CueCoModel, "training_step", recording)
    CueCoEmbedder(**params(callbacks=[spy], **overrides)).fit(X)
    return seen


def test_negatives_are_dropped_from_half_way_on_by_default(X, monkeypatch):
    assert DROP_NEGATIVES_FRACTION == 0.5
    assert CueCoEmbedder().cluster_negatives == "drop"
    seen = _flags_by_epoch(X, monkeypatch)
    assert seen == {0: {False}, 1: {False}, 2: {True}, 3: {True}}
    kept = _flags_by_epoch(X, monkeypatch, cluster_negatives="keep")
    assert kept == {0: {False}, 1: {False}, 2: {False}, 3: {False}}


def test_dropping_the_negatives_changes_the_training_reproducibly(dropped, X):
    kept = CueCoEmbedder(**params(cluster_negatives="keep")).fit(X)
    assert not np.array_equal(dropped.transform(X), kept.transform(X))
    again = CueCoEmbedder(**params(cluster_negatives="drop")).fit(X)
    assert_array_equal(again.transform(X), dropped.transform(X))
    assert np.isfinite(dropped.transform(X)).all()
    assert dropped.get_params()["cluster_negatives"] == "drop"


def test_without_the_clustering_term_dropping_changes_nothing(X):
    # MoCo v2 has no clusters, so no negative is left out
    moco = CueCoEmbedder(**params(cluster_weight=0.0, cluster_negatives="keep")).fit(X)
    moco_drop = CueCoEmbedder(**params(cluster_weight=0.0, cluster_negatives="drop")).fit(X)
    assert_array_equal(moco_drop.transform(X), moco.transform(X))


def _queue_labels(folder, epoch):
    state = torch.load(folder / f"epoch-{epoch:04d}.pt", weights_only=True)
    return state["task"]["model"]["queue.labels"]


class LabelCounter(Callback):
    """How many times the queue had been labelled by the end of each epoch."""

    def __init__(self):
        self.calls, self.by_epoch_end = 0, []

    def on_epoch_end(self, trainer, epoch, logs):
        self.by_epoch_end.append(self.calls)


def test_the_queue_is_labelled_once_an_epoch_while_negatives_are_dropped(X, monkeypatch):
    counter = LabelCounter()
    original = CueCoModel.label_queue

    def recording(self):
        counter.calls += 1
        original(self)
        # every queued key now carries its cluster, by the rule of the steps
        assert torch.equal(self.queue.labels, self.bank.assign_main(self.queue.keys))

    monkeypatch.setattr(CueCoModel, "label_queue", recording)
    CueCoEmbedder(**params(callbacks=[counter], cluster_negatives="drop")).fit(X)
    assert counter.by_epoch_end == [0, 0, 1, 2]  # at the start of epochs 2 and 3
    counter.__init__()
    CueCoEmbedder(**params(callbacks=[counter], cluster_negatives="keep")).fit(X)
    assert counter.by_epoch_end == [0, 0, 0, 0]


def test_queued_keys_carry_their_cluster_only_while_negatives_are_dropped(X, tmp_path):
    CueCoEmbedder(**params(callbacks=[Checkpoint(tmp_path / "keep", keep_last=5)],
                           cluster_negatives="keep")).fit(X)
    CueCoEmbedder(**params(callbacks=[Checkpoint(tmp_path / "drop", keep_last=5)],
                           cluster_negatives="drop")).fit(X)
    assert (_queue_labels(tmp_path / "keep", 4) == UNLABELLED).all()
    assert (_queue_labels(tmp_path / "drop", 2) == UNLABELLED).all()
    labels = _queue_labels(tmp_path / "drop", 4)
    assert labels.min() >= 0 and labels.max() < PARAMS["n_clusters"]


def test_resume_while_dropping_equals_the_uninterrupted_run(dropped, X, tmp_path, stop_after):
    CueCoEmbedder(**params(cluster_negatives="drop",
                           callbacks=[Checkpoint(tmp_path, keep_last=5), stop_after(3)])).fit(X)
    resumed = CueCoEmbedder(**params(cluster_negatives="drop")).fit(
        X, resume_from=tmp_path / "epoch-0003.pt")
    assert_array_equal(resumed.transform(X), dropped.transform(X))
    assert_array_equal(resumed.cluster_centers_, dropped.cluster_centers_)


@pytest.mark.parametrize("value", ["all", True, None])
def test_bad_cluster_negatives_is_refused_by_name(X, value):
    with pytest.raises(InvalidParameterError, match="cluster_negatives"):
        CueCoEmbedder(**params(cluster_negatives=value)).fit(X)


def test_a_run_that_kept_the_negatives_resumes_only_with_keep(X, tmp_path, stop_after):
    # the setting shapes the training, so a resumed run must name the checkpoint's
    CueCoEmbedder(**params(cluster_negatives="keep",
                           callbacks=[Checkpoint(tmp_path, keep_last=5), stop_after(2)])).fit(X)
    with pytest.raises(ValueError, match="cluster_negatives='keep'"):
        CueCoEmbedder(**params()).fit(X, resume_from=tmp_path / "epoch-0002.pt")
    resumed = CueCoEmbedder(**params(cluster_negatives="keep")).fit(
        X, resume_from=tmp_path / "epoch-0002.pt")
    assert resumed.n_iter_ == PARAMS["max_epochs"]


# ----------------------------------------------------------------------------- neighbours as positives


@pytest.fixture(scope="module")
def neighbours(X):
    return CueCoEmbedder(**params(cluster_positives="neighbour")).fit(X)


@pytest.fixture(scope="module")
def views(X):
    return CueCoEmbedder(**params(cluster_positives="view")).fit(X)


def test_neighbours_are_positives_only_while_negatives_are_left_out(X, monkeypatch):
    spy, seen = EpochSpy(), {}
    original = CueCoModel.training_step

    def recording(self, v1, v2, cluster_weight=0.0, **kwargs):
        seen.setdefault(spy.epoch, set()).add(kwargs.get("neighbour_positives", False))
        return original(self, v1, v2, cluster_weight, **kwargs)

    monkeypatch.setattr(CueCoModel, "training_step", recording)
    CueCoEmbedder(**params(callbacks=[spy])).fit(X)  # the default: "neighbour"
    assert seen == {0: {False}, 1: {False}, 2: {True}, 3: {True}}
    seen.clear()
    CueCoEmbedder(**params(callbacks=[spy], cluster_positives="view")).fit(X)
    assert seen == {0: {False}, 1: {False}, 2: {False}, 3: {False}}
    seen.clear()
    CueCoEmbedder(**params(callbacks=[spy], cluster_positives="neighbour",
                           cluster_negatives="keep")).fit(X)
    assert seen == {0: {False}, 1: {False}, 2: {False}, 3: {False}}


def test_neighbour_positives_change_the_training_reproducibly(neighbours, views, dropped, X):
    assert not np.array_equal(neighbours.transform(X), views.transform(X))
    assert_array_equal(dropped.transform(X), neighbours.transform(X))  # the default
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

"""Tests of the training callbacks: knn_accuracy, KNNMonitor, EarlyStopping,
Checkpoint and ProgressBar.

Fits use 300 digits (8x8 grayscale images) and three short epochs; the
estimators several tests only read are fitted once per module.
"""

import math
import types

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder
from skcueco.training.trained import feature_scale
from skcueco.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    KNNMonitor,
    ProgressBar,
    knn_accuracy,
)

PARAMS = dict(
    max_epochs=3, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=5, cluster_warmup=1, random_state=0, device="cpu",
)


def params(**overrides):
    return {**PARAMS, **overrides}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300], y[:300]


class ListFiles(Callback):
    """Records the checkpoint files present after every epoch."""

    def __init__(self, dirname):
        self.dirname = dirname
        self.seen = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.seen.append(sorted(p.name for p in self.dirname.glob("*.pt")))


class Script(Callback):
    """Writes ``logs[name]`` from a scripted sequence of values."""

    def __init__(self, name, values):
        self.name, self.values = name, list(values)

    def on_epoch_end(self, trainer, epoch, logs):
        logs[self.name] = self.values[epoch]


def _fake_trainer():
    return types.SimpleNamespace(stop_training=False, epoch=0, max_epochs=100)


# -- knn_accuracy -----------------------------------------------------------------


def _hand_knn(bank, labels, q, k, t):
    """Direct transcription of the weighted vote for one query."""
    bank = [np.asarray(b, float) / np.linalg.norm(b) for b in bank]
    q = np.asarray(q, float) / np.linalg.norm(q)
    cos = [float(b @ q) for b in bank]
    order = sorted(range(len(bank)), key=lambda i: -cos[i])[:k]
    votes = {}
    for i in order:
        votes[labels[i]] = votes.get(labels[i], 0.0) + math.exp(cos[i] / t)
    return max(votes, key=votes.get)


# The query (1, 0) has one very close "a" neighbour and two farther "b"
# neighbours at cos 0.6. Bank rows have very different norms, so only a cosine
# (not a dot product) puts "a" first.
BANK = np.array([[0.1, 0.005], [3.0, 4.0], [6.0, -8.0], [-1.0, 0.0]])
BANK_LABELS = np.array(["a", "b", "b", "b"])
QUERIES = np.array([[1.0, 0.0], [-1.0, 0.1]])


def test_knn_accuracy_matches_hand_computation():
    # query 0: a has cos ~0.9988 -> exp(9.988) ~ 21,750 beats 2 * exp(6) ~ 807
    # query 1: its 3 nearest are all "b"
    assert _hand_knn(BANK, BANK_LABELS, QUERIES[0], 3, 0.1) == "a"
    assert _hand_knn(BANK, BANK_LABELS, QUERIES[1], 3, 0.1) == "b"
    acc = knn_accuracy(BANK, BANK_LABELS, QUERIES, np.array(["a", "b"]), k=3, temperature=0.1)
    assert acc == 1.0
    acc = knn_accuracy(BANK, BANK_LABELS, QUERIES, np.array(["a", "a"]), k=3, temperature=0.1)
    assert acc == 0.5


def test_knn_accuracy_weighting_changes_the_vote():
    # a high temperature makes the weights nearly equal: a plain majority, and
    # the two "b" neighbours outvote the single closer "a"
    assert _hand_knn(BANK, BANK_LABELS, QUERIES[0], 3, 100.0) == "b"
    acc = knn_accuracy(BANK, BANK_LABELS, QUERIES[:1], np.array(["a"]), k=3, temperature=100.0)
    assert acc == 0.0
    acc = knn_accuracy(BANK, BANK_LABELS, QUERIES[:1], np.array(["a"]), k=3, temperature=0.1)
    assert acc == 1.0
    # with k=1 the nearest neighbour alone decides whatever the temperature
    acc = knn_accuracy(BANK, BANK_LABELS, QUERIES[:1], np.array(["a"]), k=1, temperature=100.0)
    assert acc == 1.0


def test_knn_accuracy_k_larger_than_bank_is_capped():
    labels = np.array(["b", "a", "b", "b"])
    full = knn_accuracy(BANK, labels, QUERIES, np.array(["b", "b"]), k=4, temperature=0.5)
    capped = knn_accuracy(BANK, labels, QUERIES, np.array(["b", "b"]), k=200, temperature=0.5)
    assert capped == full
    # integer labels and torch input work too
    acc = knn_accuracy(torch.as_tensor(BANK), np.array([0, 1, 1, 1]),
                       torch.as_tensor(QUERIES), np.array([0, 1]), k=500, temperature=0.1)
    assert acc == 1.0


# -- KNNMonitor -------------------------------------------------------------------


@pytest.fixture(scope="module")
def knn_fit(digits):
    X, y = digits
    monitor = KNNMonitor(X[:200], y[:200], X[200:], y[200:], every=2, k=20)
    est = CueCoEmbedder(**params(callbacks=[monitor])).fit(X)
    return est, monitor


def test_knn_monitor_records_every_and_last_epoch(knn_fit):
    est, _ = knn_fit
    acc = est.history_["knn_accuracy"].to_numpy()
    assert len(acc) == 3
    # epoch 1: not a multiple of every=2; epoch 2: every; epoch 3: the last
    assert np.isnan(acc[0])
    assert np.all(np.isfinite(acc[1:]))
    assert np.all((acc[1:] >= 0.0) & (acc[1:] <= 1.0))
    # digits embeddings are far better than chance (0.1), even after 3 epochs
    assert acc[-1] > 0.2


def test_knn_monitor_last_value_is_that_of_the_final_model(knn_fit, digits):
    est, monitor = knn_fit
    X, y = digits
    # the raw features of the final model, standardised on the bank
    est.set_params(embedding_space="features")
    bank, queries = (est.transform(Z) * est.embedding_scale_ + est.embedding_mean_
                     for Z in (X[:200], X[200:]))
    est.set_params(embedding_space="joint")
    mean, scale = bank.mean(axis=0), feature_scale(bank.std(axis=0))
    expected = knn_accuracy((bank - mean) / scale, y[:200], (queries - mean) / scale,
                            y[200:], k=monitor.k, temperature=monitor.temperature)
    assert est.history_["knn_accuracy"].iloc[-1] == pytest.approx(expected)


def test_knn_monitor_does_not_perturb_training(knn_fit, checkpoint_fit, digits):
    # both fits use the same parameters; their callbacks only observe
    X, _ = digits
    est, _ = knn_fit
    other, _, _ = checkpoint_fit
    assert_array_equal(est.transform(X), other.transform(X))


def test_knn_monitor_mismatched_lengths(digits):
    X, y = digits
    with pytest.raises(ValueError, match="same number of samples"):
        KNNMonitor(X[:10], y[:9], X[10:20], y[10:20])
    with pytest.raises(ValueError, match="same number of samples"):
        KNNMonitor(X[:10], y[:10], X[10:20], y[10:21])


def test_knn_monitor_validates_its_data_like_the_estimator(digits):
    X, y = digits
    monitor = KNNMonitor(X[:100], y[:100], X[100:150, :32], y[100:150])
    est = CueCoEmbedder(**params(max_epochs=1, callbacks=[monitor]))
    with pytest.raises(ValueError, match="features"):
        est.fit(X)


# -- EarlyStopping ----------------------------------------------------------------


def _drive(cb, values):
    """Feed ``values`` to ``cb`` as epochs; returns the number of epochs run."""
    trainer = _fake_trainer()
    cb.on_train_begin(trainer)
    for epoch, value in enumerate(values):
        cb.on_epoch_end(trainer, epoch, {"m": value})
        if trainer.stop_training:
            return epoch + 1
    return len(values)


def test_early_stopping_logic():
    cb = EarlyStopping("m", patience=2)
    # improvements at epochs 1, 2 and 4 reset the wait; 5 and 6 do not improve
    assert _drive(cb, [5.0, 4.0, 4.5, 3.0, 3.5, 3.0, 1.0]) == 6
    assert (cb.best_, cb.best_epoch_, cb.stopped_epoch_) == (3.0, 4, 6)
    # runs to the end when it keeps improving
    cb = EarlyStopping("m", patience=1)
    assert _drive(cb, [3.0, 2.0, 1.0]) == 3
    assert cb.stopped_epoch_ is None and cb.best_epoch_ == 3


def test_early_stopping_min_delta():
    cb = EarlyStopping("m", patience=2, min_delta=0.5)
    # 4.8 and 4.6 are better, but not by more than 0.5
    assert _drive(cb, [5.0, 4.8, 4.6, 1.0]) == 3
    assert cb.best_ == 5.0 and cb.best_epoch_ == 1


def test_early_stopping_mode_auto_and_explicit():
    values = [0.5, 0.6, 0.55, 0.58]
    cb = EarlyStopping("knn_accuracy", patience=1)  # "acc" -> higher is better
    trainer = _fake_trainer()
    cb.on_train_begin(trainer)
    for epoch, v in enumerate(values):
        cb.on_epoch_end(trainer, epoch, {"knn_accuracy": v})
        if trainer.stop_training:
            break
    assert cb.best_ == 0.6 and cb.stopped_epoch_ == 3
    cb = EarlyStopping("val_loss", patience=1)  # lower is better
    trainer = _fake_trainer()
    cb.on_train_begin(trainer)
    for epoch, v in enumerate(values):
        cb.on_epoch_end(trainer, epoch, {"val_loss": v})
        if trainer.stop_training:
            break
    assert cb.best_ == 0.5 and cb.stopped_epoch_ == 2
    assert _drive(EarlyStopping("m", patience=1, mode="max"), values) == 3
    assert _drive(EarlyStopping("m", patience=1, mode="min"), values) == 2


def test_early_stopping_ignores_epochs_without_the_value():
    cb = EarlyStopping("absent", patience=1)
    trainer = _fake_trainer()
    cb.on_train_begin(trainer)
    for epoch in range(5):
        cb.on_epoch_end(trainer, epoch, {"loss": 1.0})
    assert not trainer.stop_training and cb.best_ is None


@pytest.mark.parametrize("kwargs", [dict(mode="bigger"), dict(patience=0), dict(patience=-1)])
def test_early_stopping_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        EarlyStopping("loss", **kwargs)


@pytest.fixture(scope="module")
def early_fit(digits, tmp_path_factory):
    X, _ = digits
    ckpt_dir = tmp_path_factory.mktemp("early")
    stopper = EarlyStopping("fake", patience=2)
    callbacks = [Script("fake", [3.0, 1.0, 2.0, 1.5, 0.5, 0.1]), stopper,
                 Checkpoint(ckpt_dir, every=100)]
    est = CueCoEmbedder(**params(max_epochs=6, callbacks=callbacks)).fit(X)
    return est, stopper, ckpt_dir


def test_early_stopping_stops_the_fit(early_fit):
    est, stopper, _ = early_fit
    # best 1.0 at epoch 2; 2.0 and 1.5 do not improve -> stop after epoch 4
    assert est.n_iter_ == 4
    assert len(est.history_) == 4
    assert stopper.stopped_epoch_ == 4
    assert stopper.best_ == 1.0
    assert stopper.best_epoch_ == 2
    # values written into the logs by a callback end up in history_
    assert_array_equal(est.history_["fake"], [3.0, 1.0, 2.0, 1.5])


def test_checkpoint_saves_the_last_epoch_when_stopped_early(early_fit):
    """Checkpoint promises a save "after the last one"; an early stop's last
    epoch (4 here) is not saved because only ``epoch >= max_epochs`` counts as
    last."""
    _, _, ckpt_dir = early_fit
    assert (ckpt_dir / "epoch-0004.pt").exists()


# -- Checkpoint -------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_fit(digits, tmp_path_factory):
    X, _ = digits
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    ckpt = Checkpoint(ckpt_dir, every=2, keep_last=1)
    spy = ListFiles(ckpt_dir)
    est = CueCoEmbedder(**params(callbacks=[ckpt, spy])).fit(X)
    return est, ckpt_dir, spy


def test_checkpoint_every_last_and_keep_last(checkpoint_fit):
    _, ckpt_dir, spy = checkpoint_fit
    # epoch 1: nothing; epoch 2: every=2; epoch 3: the last, and keep_last=1
    # removes epoch 2
    assert spy.seen == [[], ["epoch-0002.pt"], ["epoch-0003.pt"]]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch-0003.pt"]


def test_checkpoint_files_are_plain_data(checkpoint_fit):
    est, ckpt_dir, _ = checkpoint_fit
    state = torch.load(ckpt_dir / "epoch-0003.pt", weights_only=True)
    assert state["epoch"] == 3
    assert len(state["history"]) == 3
    weights = {k[len("backbone_q."):]: v for k, v in state["task"]["model"].items()
               if k.startswith("backbone_q.")}
    assert weights
    for key, value in est.encoder_.state_dict().items():
        assert torch.equal(weights[key], value), key


def test_checkpoint_keeps_several(digits, tmp_path):
    X, _ = digits
    ckpt = Checkpoint(tmp_path / "sub" / "dir", every=1, keep_last=2)
    CueCoEmbedder(**params(max_epochs=3, callbacks=[ckpt])).fit(X[:150])
    assert sorted(p.name for p in (tmp_path / "sub" / "dir").iterdir()) == [
        "epoch-0002.pt", "epoch-0003.pt"]
    assert [p.name for p in ckpt.saved_] == ["epoch-0002.pt", "epoch-0003.pt"]


@pytest.mark.parametrize("kwargs", [dict(every=0), dict(keep_last=0)])
def test_checkpoint_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        Checkpoint(tmp_path, **kwargs)


# -- ProgressBar ------------------------------------------------------------------


def test_verbose_shows_a_progress_bar(digits, capsys):
    X, _ = digits
    CueCoEmbedder(**params(max_epochs=2, verbose=1)).fit(X[:150])
    err = capsys.readouterr().err
    assert "CueCo" in err
    assert "2/2" in err
    assert "loss=" in err


def test_verbose_0_is_silent(digits, capsys):
    X, _ = digits
    CueCoEmbedder(**params(max_epochs=1, verbose=0)).fit(X[:150])
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_progress_bar_callback_directly(capsys):
    bar = ProgressBar(desc="custom")
    trainer = types.SimpleNamespace(max_epochs=4, epoch=1, is_main_process=True)
    bar.on_train_begin(trainer)
    bar.on_epoch_end(trainer, 1, {"loss": 1.23456})
    bar.on_train_end(trainer)
    err = capsys.readouterr().err
    assert "custom" in err
    assert "2/4" in err  # starts at the epoch already done (resume, warm start)
    assert "loss=1.2346" in err

"""CueCo must learn something: on digits its embeddings beat raw pixels and
the same network untrained, under the same logistic-regression probe."""

import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skcueco import CueCoEmbedder
from skcueco.cli.main import probe_accuracy


@pytest.fixture(scope="module")
def digits_split():
    digits = load_digits()
    return train_test_split(
        digits.images, digits.target, test_size=0.25, random_state=0,
        stratify=digits.target,
    )


def test_cueco_beats_raw_pixels_and_untrained_network(digits_split):
    X_train, X_test, y_train, y_test = digits_split
    params = dict(max_epochs=25, hidden_dim=512, cluster_warmup=5, random_state=0)
    embedder = CueCoEmbedder(**params).fit(X_train)
    untrained = CueCoEmbedder(**params)._fit_untrained(X_train)

    cueco = probe_accuracy(
        embedder.transform(X_train), y_train, embedder.transform(X_test), y_test)
    raw = probe_accuracy(
        X_train.reshape(len(X_train), -1), y_train, X_test.reshape(len(X_test), -1), y_test)
    initial = probe_accuracy(
        untrained.transform(X_train), y_train, untrained.transform(X_test), y_test)

    assert cueco > raw, (cueco, raw)
    assert cueco > initial, (cueco, initial)
    # the loss went down and the clustering term was switched on after the
    # warm-up, rising over the ramp to its full weight
    history = embedder.history_
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    ramp = embedder.cluster_ramp_
    assert ramp >= 1
    weights = history["cluster_weight"].to_numpy()
    assert (weights[5:5 + ramp] > 0).all() and (weights[5:5 + ramp] < 1.0).all()
    assert (weights[5 + ramp:] == 1.0).all()
    assert (history["clustering"].iloc[:5] == 0).all()

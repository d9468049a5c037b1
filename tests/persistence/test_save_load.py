"""Saving and loading a fitted CueCoEmbedder: the round trip, and files it refuses.

The other save/load tests of this folder: test_persistence.py (pickles, devices,
older layouts), test_compat_files.py (files written by an earlier version),
test_load_limits.py (memory while checking a file), test_export.py (ONNX and
TorchScript).
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from torch import nn

from skcueco import CueCoEmbedder

PARAMS = dict(
    max_epochs=3, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=5, cluster_warmup=1, random_state=0, device="cpu",
)


def params(**overrides):
    return {**PARAMS, **overrides}


@pytest.fixture(scope="module")
def X():
    return load_digits().data[:300]


@pytest.fixture(scope="module")
def df_fit(X):
    df = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    return CueCoEmbedder(**params(max_epochs=2)).fit(df), df


def test_save_load_round_trip(df_fit, tmp_path):
    est, df = df_fit
    path = tmp_path / "model.pt"
    est.save(path)
    loaded = CueCoEmbedder.load(path)
    assert_array_equal(loaded.transform(df), est.transform(df))
    assert_array_equal(loaded.predict(df), est.predict(df))
    pd.testing.assert_frame_equal(loaded.history_, est.history_, check_exact=True)
    assert loaded.n_iter_ == est.n_iter_ == 2
    assert loaded.n_features_in_ == 64
    assert_array_equal(loaded.feature_names_in_, est.feature_names_in_)
    assert list(loaded.feature_names_in_) == list(df.columns)
    assert loaded.image_shape_ == est.image_shape_ == (1, 8, 8)
    assert loaded.get_params()["projection_dim"] == 32
    assert_array_equal(loaded.cluster_centers_, est.cluster_centers_)
    # the saved file itself is plain data
    torch.load(path, weights_only=True)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_load_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"meta": Evil(marker)}, path)
    with pytest.raises(ValueError, match="not a skcueco model"):
        CueCoEmbedder.load(path)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    marker2 = tmp_path / "pwned2"
    torch.save({"meta": Evil(marker2)}, tmp_path / "evil2.pt")
    torch.load(tmp_path / "evil2.pt", weights_only=False)
    assert marker2.exists()


def test_load_refuses_damaged_and_foreign_files(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.RandomState(0).bytes(4096))
    with pytest.raises(ValueError):
        CueCoEmbedder.load(path)
    other = tmp_path / "other.pt"
    torch.save({"meta": json.dumps({"format": "something.else"})}, other)
    with pytest.raises(ValueError):
        CueCoEmbedder.load(other)
    with pytest.raises(FileNotFoundError):
        CueCoEmbedder.load(tmp_path / "missing.pt")


def test_load_refuses_incompatible_version(df_fit, tmp_path):
    est, _ = df_fit
    path = tmp_path / "model.pt"
    est.save(path)
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["version"] = "99.0.0"
    payload["meta"] = json.dumps(meta)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"99\.0\.0"):
        CueCoEmbedder.load(path)


def test_save_refuses_custom_backbone(X, tmp_path):
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten())
    est = CueCoEmbedder(**params(max_epochs=1, backbone=backbone)).fit(X[:150])
    with pytest.raises(ValueError, match="custom backbone"):
        est.save(tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()

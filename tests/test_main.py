"""The main job (python -m skcueco) and model persistence across devices."""

import pickle
import subprocess
import sys
import warnings

import joblib
import numpy as np
import pytest
import torch

from skcueco import CueCoEmbedder
from skcueco.cli.main import main

FAST = ["--epochs", "2", "--batch-size", "64", "--quiet"]


def _blobs_images(n=120, seed=0):
    """Two classes of 8x8 images: bright top half vs bright bottom half."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.uniform(0, 60, size=(n, 8, 8))
    X[y == 0, :4] += 150
    X[y == 1, 4:] += 150
    return X.clip(0, 255).astype(np.uint8), y


def test_main_job_on_user_data_prints_table_and_saves(tmp_path, capsys):
    X, y = _blobs_images()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    model_path = tmp_path / "model.joblib"
    assert main(["--data", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--n-clusters", "2", "--save", str(model_path), *FAST]) == 0
    out = capsys.readouterr().out
    for row in ("CueCo embeddings", "raw inputs", "untrained network", "fit time"):
        assert row in out
    accuracies = [float(line.split()[-1]) for line in out.splitlines()
                  if line.startswith(("CueCo", "raw", "untrained"))]
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)

    loaded = joblib.load(model_path)
    assert loaded.n_iter_ == 2
    assert loaded.transform(X[:5]).shape == (5, loaded.encoder_.out_dim)


def test_main_job_requires_labels_with_data(tmp_path):
    X, _ = _blobs_images()
    np.save(tmp_path / "X.npy", X)
    with pytest.raises(SystemExit, match="--labels"):
        main(["--data", str(tmp_path / "X.npy"), *FAST])


def test_main_job_rejects_mismatched_labels(tmp_path):
    X, y = _blobs_images()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y[:-3])
    with pytest.raises(SystemExit, match="labels"):
        main(["--data", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy"), *FAST])


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "skcueco", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--data" in result.stdout and "--save" in result.stdout


def test_gpu_fitted_model_loads_on_cpu_with_warning():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    X, _ = _blobs_images(60)
    est = CueCoEmbedder(max_epochs=1, batch_size=32, hidden_dim=16, projection_dim=8,
                        n_clusters=2, random_state=0).fit(X)
    expected = est.transform(X)
    # what a CUDA-fitted estimator pickles: the same blobs, device_ naming a GPU
    state = est.__getstate__()
    state["device_"] = "cuda:0"
    payload = pickle.dumps(state)
    restored = CueCoEmbedder.__new__(CueCoEmbedder)
    with pytest.warns(UserWarning, match="not available here"):
        restored.__setstate__(pickle.loads(payload))
    assert restored.device_ == torch.device("cpu")
    np.testing.assert_array_equal(restored.transform(X), expected)


def test_pickle_on_same_device_is_silent():
    X, _ = _blobs_images(60)
    est = CueCoEmbedder(max_epochs=1, batch_size=32, hidden_dim=16, projection_dim=8,
                        n_clusters=2, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(restored.predict(X), est.predict(X))

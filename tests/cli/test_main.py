"""The main job (python -m skcueco): output, options, one-line errors; and model
persistence across devices."""

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

FAST = ["--epochs", "2", "--cluster-warmup", "1", "--batch-size", "64", "--quiet"]


def _blobs_images(n=120, seed=0):
    """Two classes of 8x8 images: bright top half vs bright bottom half."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.uniform(0, 60, size=(n, 8, 8))
    X[y == 0, :4] += 150
    X[y == 1, 4:] += 150
    return X.clip(0, 255).astype(np.uint8), y


def _write(tmp_path, X, y):
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return ["--data", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy")]


def test_main_job_on_user_data_prints_table_and_saves_safe_format(tmp_path, capsys):
    X, y = _blobs_images()
    model_path = tmp_path / "model.pt"
    assert main([*_write(tmp_path, X, y), "--n-clusters", "2", "--save", str(model_path),
                 *FAST]) == 0
    out = capsys.readouterr().out
    for row in ("CueCo embeddings", "raw inputs", "untrained network", "fit time"):
        assert row in out
    assert "for 2 epochs on" in out
    accuracies = [float(line.split()[-1]) for line in out.splitlines()
                  if line.startswith(("CueCo", "raw", "untrained"))]
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)

    # the default is the format that runs no code on load, not a pickle
    loaded = CueCoEmbedder.load(model_path)
    assert loaded.n_iter_ == 2
    assert loaded.transform(X[:5]).shape == (5, len(loaded.get_feature_names_out()))
    with pytest.raises(Exception):
        joblib.load(model_path)


def test_main_job_saves_a_pickle_on_request(tmp_path, capsys):
    X, y = _blobs_images()
    model_path = tmp_path / "model.joblib"
    main([*_write(tmp_path, X, y), "--n-clusters", "2", "--save", str(model_path),
          "--save-format", "pickle", *FAST])
    assert "joblib.load" in capsys.readouterr().out
    loaded = joblib.load(model_path)
    assert loaded.n_iter_ == 2
    assert loaded._trained.train_state is not None  # a pickle keeps what warm_start needs


def test_one_epoch_is_singular_and_the_warmup_warning_is_one_line(tmp_path, capsys):
    X, y = _blobs_images()
    main([*_write(tmp_path, X, y), "--n-clusters", "2", "--epochs", "1",
          "--cluster-warmup", "3", "--batch-size", "64", "--quiet"])
    captured = capsys.readouterr()
    assert "for 1 epoch on" in captured.out
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1
    assert "--epochs 1 <= --cluster-warmup 3" in warning[0]
    assert "never switches on" in warning[0]


def test_default_warmup_is_the_estimators_and_never_warns(tmp_path, capsys):
    X, y = _blobs_images()
    model_path = tmp_path / "model.pt"
    main([*_write(tmp_path, X, y), "--n-clusters", "2", "--epochs", "2", "--batch-size", "64",
          "--quiet", "--save", str(model_path)])
    assert "warning" not in capsys.readouterr().err
    assert CueCoEmbedder.load(model_path).cluster_warmup == "auto"


@pytest.mark.parametrize("value", ["-1", "soon", "1.5"])
def test_bad_cluster_warmup_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--cluster-warmup", value])
    assert info.value.code == 2
    assert "--cluster-warmup: expected 'auto' or an integer >= 0" in capsys.readouterr().err


def test_cluster_warmup_reaches_the_estimator_and_silences_the_warning(tmp_path, capsys):
    X, y = _blobs_images()
    model_path = tmp_path / "model.pt"
    main([*_write(tmp_path, X, y), "--n-clusters", "2", "--epochs", "2",
          "--cluster-warmup", "1", "--batch-size", "64", "--quiet", "--save", str(model_path)])
    assert "warning" not in capsys.readouterr().err
    loaded = CueCoEmbedder.load(model_path)
    assert loaded.cluster_warmup == 1
    # epoch 1 is warm-up, epoch 2 trains with the clustering term
    assert loaded.history_["cluster_weight"].tolist() == [0.0, 1.0]


def _exit_status_and_stderr(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_main_job_rejects_mismatched_labels(tmp_path, capsys):
    X, y = _blobs_images()
    status, err = _exit_status_and_stderr([*_write(tmp_path, X, y[:-3]), *FAST], capsys)
    assert status == 2
    assert "120 samples in --data but 117 labels" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--data", "--labels"])
def test_missing_file_is_one_line_and_status_2(tmp_path, capsys, option):
    X, y = _blobs_images()
    argv = _write(tmp_path, X, y)
    argv[argv.index(option) + 1] = str(tmp_path / "missing.npy")
    status, err = _exit_status_and_stderr([*argv, *FAST], capsys)
    assert status == 2
    assert err.strip().endswith(f": error: {option}: no such file: {tmp_path / 'missing.npy'}")
    assert len(err.strip().splitlines()) == 1


def test_unreadable_data_is_one_line(tmp_path, capsys):
    (tmp_path / "X.npy").write_text("not an array")
    np.save(tmp_path / "y.npy", np.zeros(3))
    status, err = _exit_status_and_stderr(
        ["--data", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy"), *FAST], capsys)
    assert status == 2
    assert "--data: cannot read" in err and len(err.strip().splitlines()) == 1


def test_unavailable_device_is_one_line_and_status_2(capsys):
    # no machine has 100 GPUs, so this fails with and without CUDA
    status, err = _exit_status_and_stderr(["--device", "cuda:99", *FAST], capsys)
    assert status == 2
    assert "error: --device:" in err and len(err.strip().splitlines()) == 1


def test_cuda_without_a_gpu_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    status, err = _exit_status_and_stderr(["--device", "cuda", *FAST], capsys)
    assert status == 2
    assert "no CUDA GPU is available" in err and len(err.strip().splitlines()) == 1


def test_bad_estimator_parameter_is_one_line(tmp_path, capsys):
    X, y = _blobs_images()
    status, err = _exit_status_and_stderr(
        [*_write(tmp_path, X, y), "--n-clusters", "1000", *FAST], capsys)
    assert status == 2
    assert "n_clusters" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "skcueco", "--help"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("usage: python -m skcueco ")
    for option in ("--data", "--save", "--save-format", "--cluster-warmup"):
        assert option in result.stdout


def test_missing_file_from_the_command_line_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "skcueco", "--data", str(tmp_path / "X.npy"),
         "--labels", str(tmp_path / "y.npy")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"python -m skcueco: error: --data: no such file: {tmp_path / 'X.npy'}"
    ]


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

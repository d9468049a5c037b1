"""MLflow: the metrics, parameters and run status it logs, read back from the store."""

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder
from skcueco import _mlflow
from skcueco.callbacks import Callback, KNNMonitor, MLflow

PARAMS = dict(
    max_epochs=2, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=5, cluster_warmup=1, random_state=0, device="cpu",
)
N_STEPS = 300 // 64  # steps per epoch: the last partial batch is dropped
COLUMNS = ("loss", "contrastive", "clustering", "lr", "cluster_weight", "knn_accuracy")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300].reshape(-1, 8, 8), y[:300]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A folder store under ``tmp_path``: its URI, with MLflow's global state left as found.

    mlflow-skinny opens a database store only with SQLAlchemy, so the tests
    use MLflow's folder store, which it opens once allowed to.
    """
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    # nothing lands in the working directory, whatever MLflow defaults to
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    assert mlflow.active_run() is None
    uri = (tmp_path / "mlruns").as_uri()
    yield uri
    while mlflow.active_run() is not None:  # a failed test leaves no run open
        mlflow.end_run()
    assert set(os.listdir(tmp_path)) <= {"mlruns"}


def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def metric(uri, run_id, key):
    """``(steps, values)`` of a metric, in step order."""
    points = sorted(client(uri).get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.step for m in points], np.array([m.value for m in points])


def fit_with_tracker(X, y, tracker, **params):
    # the monitor comes after the tracker: its entry is added to the record later
    monitor = KNNMonitor(X[:200], y[:200], X[200:], y[200:])
    return CueCoEmbedder(**{**PARAMS, **params}, callbacks=[tracker, monitor]).fit(X)


def test_metrics_params_and_status(digits, store):
    X, y = digits
    tracker = MLflow(tracking_uri=store, experiment_name="digits", run_name="cueco")
    est = fit_with_tracker(X, y, tracker)
    run = client(store).get_run(tracker.run_id_)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "cueco"
    assert client(store).get_experiment(run.info.experiment_id).name == "digits"
    for column in COLUMNS:
        steps, values = metric(store, tracker.run_id_, column)
        assert steps == [1, 2], column  # one value per epoch, at the epoch
        np.testing.assert_allclose(values, est.history_[column], rtol=1e-6, err_msg=column)
    # the clustering term is off in the warm-up epoch, on afterwards
    assert metric(store, tracker.run_id_, "cluster_weight")[1].tolist() == [0.0, 1.0]
    steps, rates = metric(store, tracker.run_id_, "images_per_second")
    assert steps == [1, 2]
    expected = N_STEPS * PARAMS["batch_size"] / est.history_["seconds"].to_numpy()
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    assert not {"epoch", "seconds"} & set(run.data.metrics)
    params = run.data.params
    assert params["max_epochs"] == "2" and params["n_clusters"] == "5"
    assert params["hidden_dim"] == "64" and params["batch_size"] == "64"
    assert params["cluster_warmup"] == "1" and params["lr"] == "auto"
    # the settings fit resolved, as the estimator reports them
    assert params["batch_size_"] == str(est.batch_size_)
    assert params["queue_size_"] == str(est.queue_size_) == "128"
    assert params["cluster_warmup_"] == str(est.cluster_warmup_)
    assert params["cluster_ramp_"] == str(est.cluster_ramp_)
    assert params["amp_"] == str(est.amp_)
    # the run is not left active, nor is the client kept
    import mlflow

    assert mlflow.active_run() is None and tracker._client is None


def test_logging_leaves_training_unchanged(digits, store):
    X, y = digits
    est = fit_with_tracker(X, y, MLflow(tracking_uri=store))
    plain = CueCoEmbedder(**PARAMS, callbacks=[KNNMonitor(X[:200], y[:200], X[200:], y[200:])])
    plain.fit(X)
    np.testing.assert_array_equal(plain.history_[list(COLUMNS)], est.history_[list(COLUMNS)])


def test_an_active_run_is_used_and_left_open(digits, store, monkeypatch):
    import mlflow

    X, y = digits
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    tracker = MLflow(experiment_name="ignored", run_name="ignored", log_params=True)
    with mlflow.start_run(run_name="mine") as run:
        mlflow.log_param("n_clusters", "mine")  # logged first: kept
        est = CueCoEmbedder(**PARAMS, callbacks=[tracker], warm_start=True)
        est.fit(X).fit(X)  # a continued fit: its epochs follow the first fit's
        assert mlflow.active_run().info.run_id == run.info.run_id
        assert client(store).get_run(run.info.run_id).info.status == "RUNNING"
    assert tracker.run_id_ == run.info.run_id
    logged = client(store).get_run(run.info.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "mine"
    steps, values = metric(store, run.info.run_id, "loss")
    assert steps == [1, 2, 3, 4]
    np.testing.assert_allclose(values, est.history_["loss"], rtol=1e-6)
    # the first fit's parameters stay (MLflow does not change a logged one)
    assert logged.data.params["n_clusters"] == "mine"
    assert logged.data.params["max_epochs"] == "2"
    assert client(store).get_experiment_by_name("ignored") is None


def test_own_run_in_mlflows_current_store_and_experiment(digits, store, monkeypatch):
    import mlflow

    X, _ = digits
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    seen = []

    class SeesTheRun(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(mlflow.active_run().info.run_id)

    tracker = MLflow(log_params=False)
    CueCoEmbedder(**PARAMS, callbacks=[tracker, SeesTheRun()]).fit(X)
    assert seen == [tracker.run_id_] * 2  # active while training, as in a with-block
    assert mlflow.active_run() is None  # and ended
    run = client(store).get_run(tracker.run_id_)
    assert run.info.status == "FINISHED" and run.data.params == {}
    assert client(store).get_experiment(run.info.experiment_id).name == "from-env"
    assert metric(store, tracker.run_id_, "loss")[0] == [1, 2]


class Fails(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 1:
            raise RuntimeError("boom")


@pytest.mark.parametrize("own_store", [True, False])
def test_a_failed_fit_marks_the_run_failed(digits, store, monkeypatch, own_store):
    import mlflow

    X, _ = digits
    if own_store:
        tracker = MLflow(tracking_uri=store)
    else:  # a run the callback made active is ended too
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
        tracker = MLflow()
    with pytest.raises(RuntimeError, match="boom"):
        CueCoEmbedder(**PARAMS, callbacks=[tracker, Fails()]).fit(X)
    assert mlflow.active_run() is None
    assert client(store).get_run(tracker.run_id_).info.status == "FAILED"
    # everything logged before the error is in the store
    assert metric(store, tracker.run_id_, "loss")[0] == [1, 2]


def fake_trainer(**attrs):
    defaults = dict(
        is_main_process=True, max_epochs=2, epoch=0, global_step=0, batch_size=8,
        optimizer=None, task=None, run_info=None, failed=False, interrupted=False,
        amp_dtype=None)
    return types.SimpleNamespace(**{**defaults, **attrs})


def test_an_interrupted_fit_marks_the_run_killed(store):
    trainer = fake_trainer(interrupted=True)
    tracker = MLflow(tracking_uri=store)
    tracker.on_train_begin(trainer)
    tracker.on_epoch_begin(trainer, 0)
    tracker.on_train_end(trainer)
    assert client(store).get_run(tracker.run_id_).info.status == "KILLED"


def test_reads_nothing_from_the_device(store, monkeypatch):
    def no_read(self, *args):
        raise AssertionError("a device value was read")

    trainer = fake_trainer()
    tracker = MLflow(tracking_uri=store, log_params=False)
    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "numpy", "__float__"):
            patch.setattr(torch.Tensor, name, no_read)
        tracker.on_train_begin(trainer)
        for epoch in range(2):
            tracker.on_epoch_begin(trainer, epoch)
            for step in range(5):
                tracker.on_batch_end(trainer, step, {"loss": torch.tensor(2.0)})
            tracker.on_epoch_end(trainer, epoch, {"epoch": epoch + 1, "loss": 2.0 - epoch,
                                                  "seconds": 0.5})
        tracker.on_train_end(trainer)
    steps, values = metric(store, tracker.run_id_, "loss")
    assert steps == [1, 2] and values.tolist() == [2.0, 1.0]
    # 5 steps of 8 images in half a second
    np.testing.assert_allclose(metric(store, tracker.run_id_, "images_per_second")[1], 80.0)


def test_without_a_batch_size_steps_per_second(store):
    trainer = fake_trainer(batch_size=None)
    tracker = MLflow(tracking_uri=store, log_params=False)
    tracker.on_train_begin(trainer)
    tracker.on_epoch_begin(trainer, 0)
    for step in range(4):
        tracker.on_batch_end(trainer, step, {})
    tracker.on_epoch_end(trainer, 0, {"epoch": 1, "loss": 1.0, "seconds": 2.0})
    tracker.on_train_end(trainer)
    run = client(store).get_run(tracker.run_id_)
    assert run.data.metrics["steps_per_second"] == 2.0
    assert "images_per_second" not in run.data.metrics


def test_only_the_main_process_logs(store, tmp_path):
    tracker = MLflow(tracking_uri=store, experiment_name="never")
    trainer = fake_trainer(is_main_process=False)
    tracker.on_train_begin(trainer)
    tracker.on_epoch_begin(trainer, 0)
    tracker.on_batch_end(trainer, 1, {"loss": torch.tensor(1.0)})
    tracker.on_epoch_end(trainer, 0, {"epoch": 1, "loss": 1.0, "seconds": 1.0})
    tracker.on_train_end(trainer)
    assert not hasattr(tracker, "run_id_")
    assert not (tmp_path / "mlruns").exists()  # the store was never opened


def test_no_run_before_training_starts(digits, store):
    """A callback listed later that fails to start leaves no run behind."""
    X, _ = digits

    class FailsToStart(Callback):
        def on_train_begin(self, trainer):
            raise ValueError("cannot start")

    tracker = MLflow(tracking_uri=store, experiment_name="digits")
    with pytest.raises(ValueError, match="cannot start"):
        CueCoEmbedder(**PARAMS, callbacks=[tracker, FailsToStart()]).fit(X)
    experiment = client(store).get_experiment_by_name("digits")
    assert experiment is None or not client(store).search_runs([experiment.experiment_id])


def test_missing_mlflow_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails
    tracker = MLflow()
    with pytest.raises(ImportError, match=r'pip install "skcueco\[mlflow\]"'):
        tracker.on_train_begin(fake_trainer())
    # every process raises, not only the one that logs
    with pytest.raises(ImportError, match="mlflow"):
        tracker.on_train_begin(fake_trainer(is_main_process=False))


def test_a_database_store_without_sqlalchemy_says_what_to_install(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setattr(_mlflow, "_has_sqlalchemy", lambda: False)
    for uri in ("sqlite:///runs.db", "postgresql+psycopg2://host/db"):
        with pytest.raises(ImportError, match=r"SQLAlchemy.*pip install mlflow"):
            MLflow(tracking_uri=uri).on_train_begin(fake_trainer(is_main_process=False))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"tracking_uri": 5}, TypeError, "tracking_uri must be a string or None, got int"),
    ({"tracking_uri": Path("runs")}, TypeError, r"as_uri\(\)"),
    ({"tracking_uri": "  "}, ValueError, "tracking_uri must be a non-empty string"),
    ({"experiment_name": ["a"]}, TypeError, "experiment_name must be a string"),
    ({"experiment_name": ""}, ValueError, "experiment_name must be a non-empty"),
    ({"run_name": 1.5}, TypeError, "run_name must be a string"),
    ({"log_params": "yes"}, TypeError, "log_params must be True or False"),
    ({"log_params": 1}, TypeError, "log_params must be True or False"),
])
def test_bad_parameters(kwargs, error, message, digits):
    tracker = MLflow(**kwargs)
    for name, value in kwargs.items():
        assert getattr(tracker, name) is value  # stored unchanged
    with pytest.raises(error, match=message):
        CueCoEmbedder(**PARAMS, callbacks=[tracker]).fit(digits[0][:70])

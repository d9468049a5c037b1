"""The MLflow callback: the training curves and settings of a fit, in an MLflow run.

Public as :class:`skcueco.callbacks.MLflow`. The ``mlflow`` package is
imported only when training starts.
"""

import importlib.util
import numbers
import time
from urllib.parse import urlparse

from .training.checkpoint import amp_name
from .training.distributed import get_world_size
from .training.hooks import Callback

_INSTALL_HINT = 'pip install "skcueco[mlflow]"'
# the history columns that are not curves: the step itself, and the epoch's
# duration (logged as images_per_second)
_NOT_METRICS = frozenset({"epoch", "seconds"})
# MLflow opens these tracking stores through SQLAlchemy, which mlflow-skinny
# does not bring
_DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})
# MLflow's "Default" experiment, in every store
_DEFAULT_EXPERIMENT_ID = "0"
# at most this many parameters per request (MLflow's limit)
_PARAMS_PER_BATCH = 100


def _import_mlflow():
    """The ``mlflow`` module, or an ImportError that says what to install."""
    try:
        import mlflow
    except ImportError as exc:
        raise ImportError(
            "The MLflow callback needs the mlflow package, which is not installed: "
            f"{_INSTALL_HINT} (or pip install mlflow-skinny)."
        ) from exc
    return mlflow


def _check_store(uri):
    """Refuse, before training, a database store that this installation cannot open."""
    scheme = urlparse(uri).scheme.split("+")[0].lower()
    if scheme in _DATABASE_SCHEMES and not _has_sqlalchemy():
        raise ImportError(
            f"The MLflow tracking URI {uri!r} is a database, which MLflow opens "
            "with SQLAlchemy, and SQLAlchemy is not installed (mlflow-skinny does "
            "not bring it). Install the full package (pip install mlflow), or log "
            "to a tracking server (tracking_uri='http://HOST:PORT', or the "
            "MLFLOW_TRACKING_URI environment variable)."
        )


def _has_sqlalchemy():
    return importlib.util.find_spec("sqlalchemy") is not None


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_simple(value):
    return value is None or isinstance(value, (str, bool, numbers.Real))


class MLflow(Callback):
    """Log the training curves and settings of a fit to an MLflow run.

    Every column of ``history_`` (``loss``, ``contrastive``, ``clustering``,
    ``lr``, ``cluster_weight``, and ``knn_accuracy`` with a
    :class:`~skcueco.callbacks.KNNMonitor`) becomes a metric with one value
    per epoch, logged at the epoch's number (from 1) as its step;
    ``images_per_second`` is the throughput over all processes. With
    ``log_params``, the run's parameters are the estimator's settings that
    define what is trained, ``max_epochs``, and the settings ``fit``
    resolved: ``batch_size_``, ``queue_size_``, ``cluster_warmup_``,
    ``cluster_ramp_`` and ``amp_``.

    If an MLflow run is active when training starts (``with
    mlflow.start_run(): ...``), the values go to that run, which is left
    open. Otherwise the callback starts a run at the first epoch and ends it
    when training ends: ``FINISHED``, ``FAILED`` after an error, or
    ``KILLED`` after an interrupt.

    Parameters
    ----------
    tracking_uri : str, default=None
        Where the run is stored: a tracking server (``"http://host:5000"``),
        a database (``"sqlite:///mlflow.db"``) or any URI MLflow accepts.
        None: MLflow's own (``mlflow.set_tracking_uri``, else the
        ``MLFLOW_TRACKING_URI`` environment variable, else MLflow's
        default). An active run is used only when it is in this store.
    experiment_name : str, default=None
        Experiment of a run this callback starts, created if needed. None:
        MLflow's current experiment (``mlflow.set_experiment``, else the
        ``MLFLOW_EXPERIMENT_NAME`` environment variable, else ``Default``).
    run_name : str, default=None
        Name of a run this callback starts. None: a name MLflow draws.
    log_params : bool, default=True
        Log the settings as the run's parameters.

    Attributes
    ----------
    run_id_ : str
        The MLflow run logged to (set when the first epoch starts, on the
        main process).

    See Also
    --------
    TensorBoard : The same curves, the cluster sizes and the embedding
        projector, in TensorBoard.
    KNNMonitor : Adds ``knn_accuracy`` to the history, and here a metric.

    Notes
    -----
    Only the main process logs. The values are those of ``history_``, read
    once per epoch on the host: logging adds no wait for the device. One
    request per epoch sends the epoch's metrics. Values that callbacks after
    this one add to an epoch's record (as a
    :class:`~skcueco.callbacks.KNNMonitor` listed later does) are logged
    when the next epoch starts, or when training ends.

    Without an active run, each ``fit`` is a run of its own; a continued
    fit (``warm_start``, ``partial_fit``) numbers its epochs after the
    earlier ones, and its ``max_epochs`` is the epoch it trains to. In an active
    run, parameters the run already has keep their value (MLflow does not
    change a logged parameter), and ``experiment_name`` and ``run_name``
    are not used.

    Needs the ``mlflow`` package: ``pip install "skcueco[mlflow]"`` installs
    ``mlflow-skinny``, which logs to a tracking server; a database store
    (MLflow's default, ``sqlite:///mlflow.db``) needs the full ``mlflow``
    package. Without what the store needs, ``fit`` stops with an error that
    says so before the first epoch.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.callbacks import MLflow
    >>> X, _ = load_digits(return_X_y=True)
    >>> tracker = MLflow(experiment_name="digits", run_name="cueco")
    >>> CueCoEmbedder(callbacks=[tracker]).fit(X)  # doctest: +SKIP

    Then ``mlflow ui`` shows the run, its parameters and its curves.
    """

    def __init__(self, tracking_uri=None, experiment_name=None, run_name=None,
                 log_params=True):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.log_params = log_params

    def _check_params(self):
        for name in ("tracking_uri", "experiment_name", "run_name"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                hint = " (for a folder: pathlib.Path(folder).as_uri())" if (
                    name == "tracking_uri") else ""
                raise TypeError(
                    f"{name} must be a string or None, got {type(value).__name__} "
                    f"{value!r}{hint}."
                )
            if not value.strip():
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}.")
        if not isinstance(self.log_params, bool):
            raise TypeError(
                f"log_params must be True or False, got {type(self.log_params).__name__} "
                f"{self.log_params!r}."
            )

    # -- hooks ------------------------------------------------------------------
    def on_train_begin(self, trainer):
        """Check the settings and the store; find an active run (main process only).

        The run itself starts with the first epoch.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.

        Raises
        ------
        TypeError, ValueError
            If a parameter is of the wrong type or empty.
        ImportError
            If the ``mlflow`` package, or what the store needs, is missing
            (on every process).
        """
        self._check_params()
        mlflow = _import_mlflow()  # every process: all fail alike
        uri = self.tracking_uri or mlflow.get_tracking_uri()
        _check_store(uri)
        self._client = self._run_id = None
        if not trainer.is_main_process:
            return
        self._mlflow = mlflow
        self._client = mlflow.MlflowClient(uri)  # opens the store: fails here if it cannot
        active = mlflow.active_run()
        # an active run lives in MLflow's current store
        if active is not None and (self.tracking_uri is None
                                   or self.tracking_uri == mlflow.get_tracking_uri()):
            self._active_id = active.info.run_id
        else:
            self._active_id = None
        batch_size = getattr(trainer, "batch_size", None)
        self._images_per_step = batch_size * get_world_size() if batch_size else None
        self._record = None  # the last epoch's record, for entries added after it

    def on_epoch_begin(self, trainer, epoch):
        """Start the run (first epoch); log what later callbacks added to the last record.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        epoch : int
            Index of the epoch (0-based).
        """
        if self._client is None:
            return
        if self._run_id is None:
            self._start_run(trainer)
        self._log_late_entries()
        self._n_steps = 0

    def on_batch_end(self, trainer, step, logs):
        """Count the step, for the epoch's images per second (reads nothing).

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        step : int
            Number of optimiser steps done so far.
        logs : dict of str to torch.Tensor
            The step's 0-d loss tensors, on the training device.
        """
        if self._run_id is not None:
            self._n_steps += 1

    def on_epoch_end(self, trainer, epoch, logs):
        """Log the epoch's record and images per second, in one request.

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        epoch : int
            Index of the epoch (0-based).
        logs : dict of str to float
            The epoch's history record.
        """
        if self._run_id is None:
            return
        step = int(logs["epoch"])
        values = self._record_values(logs, step, set(_NOT_METRICS))
        seconds = logs.get("seconds", 0.0)
        if seconds > 0 and self._n_steps:
            rate = self._n_steps / seconds
            if self._images_per_step:
                values["images_per_second"] = rate * self._images_per_step
            else:
                values["steps_per_second"] = rate
        self._log_metrics(values, step)

    def on_train_end(self, trainer):
        """Log the last late entries; end the run it started (also after an error).

        Parameters
        ----------
        trainer : skcueco.training.engine.Trainer
            The running trainer.
        """
        if getattr(self, "_run_id", None) is None:
            self._client = self._mlflow = None
            return
        status = "FINISHED"
        if getattr(trainer, "failed", False):
            status = "FAILED"
        elif getattr(trainer, "interrupted", False):
            status = "KILLED"
        try:
            self._log_late_entries()
        except BaseException:
            status = "FAILED"
            raise
        finally:
            try:
                if self._owns_run:
                    self._end_run(status)
            finally:
                self._client = self._mlflow = self._run_id = self._record = None

    # -- the run ----------------------------------------------------------------
    def _start_run(self, trainer):
        mlflow, client = self._mlflow, self._client
        self._owns_run = self._active_id is None
        if not self._owns_run:
            self._run_id = self._active_id
        else:
            experiment_id = self._experiment_id()
            if self.tracking_uri is None:
                # MLflow's current store: an active run, as a with-block's would be
                # (MLflow's current experiment when none is named)
                run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name)
            else:
                run = client.create_run(experiment_id or _DEFAULT_EXPERIMENT_ID,
                                        run_name=self.run_name)
            self._run_id = run.info.run_id
        self.run_id_ = self._run_id
        if self.log_params:
            self._log_params(trainer)

    def _experiment_id(self):
        """The named experiment's id (created if needed); None for MLflow's current one."""
        name = self.experiment_name
        if name is None and self.tracking_uri is not None:
            from mlflow.environment_variables import MLFLOW_EXPERIMENT_NAME

            name = MLFLOW_EXPERIMENT_NAME.get()
        if name is None:
            return None
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            return self._client.create_experiment(name)
        return experiment.experiment_id

    def _end_run(self, status):
        active = self._mlflow.active_run()
        if active is not None and active.info.run_id == self._run_id:
            self._mlflow.end_run(status)  # the one this callback made active
        else:
            self._client.set_terminated(self._run_id, status)

    def _log_params(self, trainer):
        from mlflow.entities import Param

        params = {key: value for key, value in
                  ((trainer.run_info or {}).get("params") or {}).items() if _is_simple(value)}
        params["max_epochs"] = trainer.max_epochs
        params.update(_resolved_settings(trainer))
        if not self._owns_run:
            # MLflow refuses to change a logged parameter
            logged = self._client.get_run(self._run_id).data.params
            params = {key: value for key, value in params.items() if key not in logged}
        items = [Param(key, str(value)) for key, value in sorted(params.items())]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._client.log_batch(self._run_id, params=items[start:start + _PARAMS_PER_BATCH])

    # -- metrics ----------------------------------------------------------------
    def _record_values(self, record, step, skip):
        """The record's numbers not in ``skip``; remembers the record for late entries."""
        values = {key: float(value) for key, value in record.items()
                  if key not in skip and _is_number(value)}
        self._record = (record, skip | set(record), step)
        return values

    def _log_late_entries(self):
        """Entries that callbacks after this one (e.g. a KNNMonitor) added to the record."""
        if self._record is None:
            return
        record, logged, step = self._record
        if set(record) - logged:
            self._log_metrics(self._record_values(record, step, logged), step)

    def _log_metrics(self, values, step):
        if not values:
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[
            Metric(key, value, timestamp, step) for key, value in values.items()])


def _resolved_settings(trainer):
    """The settings ``fit`` resolved (``"auto"`` and the like), as far as the trainer holds them."""
    settings = {}
    if getattr(trainer, "batch_size", None):
        settings["batch_size_"] = trainer.batch_size
    task = getattr(trainer, "task", None)
    queue = getattr(getattr(task, "model", None), "queue", None)
    if queue is not None:
        settings["queue_size_"] = queue.size
    for name in ("cluster_warmup", "cluster_ramp"):
        value = getattr(task, name, None)
        if _is_number(value):
            settings[f"{name}_"] = value
    settings["amp_"] = amp_name(getattr(trainer, "amp_dtype", None))
    return settings


# public as skcueco.callbacks.MLflow: documented and pickled under that name
MLflow.__module__ = "skcueco.callbacks"

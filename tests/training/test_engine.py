"""Tests of the training loop (Trainer) and of CueCoTask running inside it."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skcueco.training.engine import (
    NonFiniteLossError,
    Trainer,
    default_check_every,
    resolve_amp,
)
from skcueco.training.task import CueCoTask
from skcueco.augment import VectorAugmentation
from skcueco.callbacks import Callback
from skcueco.nn.model import CueCoModel


# ----------------------------------------------------------------------------- toy task


def _regression_loader(n=64, batch=16, seed=0):
    """Batches of rows ``[x (3 features), y]`` with ``y = x @ w + 1``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 1.0
    data = torch.cat([x, y], dim=1)
    return [data[i:i + batch] for i in range(0, n, batch)]


class RegressionTask:
    """Least squares on a linear model, following the engine's task protocol."""

    def __init__(self, log=None, nan_at_step=None):
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.log = [] if log is None else log
        self.nan_at_step = nan_at_step
        self.n_steps = 0
        self.optimizer_steps = []
        self.output_dtypes = []

    def on_epoch_begin(self, epoch):
        self.log.append(("task_epoch_begin", epoch))

    def training_step(self, batch, epoch):
        x, y = batch[:, :3], batch[:, 3:]
        pred = self.model(x)
        self.output_dtypes.append(pred.dtype)
        loss = F.mse_loss(pred.float(), y)
        if self.nan_at_step is not None and self.n_steps == self.nan_at_step:
            loss = loss * float("nan")
        self.n_steps += 1
        return loss, {"mae": (pred.float() - y).abs().mean().detach()}

    def after_optimizer_step(self, step):
        self.optimizer_steps.append(step)

    def on_epoch_end(self, epoch):
        self.log.append(("task_epoch_end", epoch))
        return {"extra": 10 * epoch}


class Recorder(Callback):
    def __init__(self, log, stop_after_epoch=None):
        self.log = log
        self.stop_after_epoch = stop_after_epoch

    def on_train_begin(self, trainer):
        self.log.append(("train_begin",))

    def on_epoch_begin(self, trainer, epoch):
        self.log.append(("epoch_begin", epoch))

    def on_batch_end(self, trainer, step, logs):
        assert set(logs) == {"loss", "mae"}
        assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in logs.values())
        self.log.append(("batch_end", step))

    def on_epoch_end(self, trainer, epoch, logs):
        assert trainer.history[-1] is logs
        self.log.append(("epoch_end", epoch))
        if self.stop_after_epoch is not None and epoch == self.stop_after_epoch:
            trainer.stop_training = True

    def on_train_end(self, trainer):
        self.log.append(("train_end",))


def _fit(task, loader, max_epochs=3, callbacks=(), lr=0.1, **kwargs):
    trainer = Trainer(device="cpu", max_epochs=max_epochs, callbacks=callbacks, **kwargs)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=lr)
    trainer.fit(task, loader, optimizer)
    return trainer


def test_trainer_loss_decreases_and_history():
    task = RegressionTask()
    loader = _regression_loader()
    trainer = _fit(task, loader, max_epochs=5)
    history = trainer.history
    assert len(history) == 5
    assert trainer.epoch == 5
    assert trainer.global_step == 5 * len(loader)
    for i, record in enumerate(history):
        assert {"epoch", "loss", "lr", "seconds", "mae", "extra"} <= set(record)
        assert record["epoch"] == i + 1
        assert record["extra"] == 10 * i
        assert record["lr"] == 0.1
        assert record["seconds"] >= 0
        assert isinstance(record["loss"], float) and math.isfinite(record["loss"])
    losses = [r["loss"] for r in history]
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    # after_optimizer_step gets the global step, counted from 0
    assert task.optimizer_steps == list(range(5 * len(loader)))


def test_history_loss_is_mean_of_step_losses():
    task = RegressionTask()
    loader = _regression_loader()
    step_losses = []

    class Grab(Callback):
        def on_batch_end(self, trainer, step, logs):
            step_losses.append(float(logs["loss"]))

    trainer = _fit(task, loader, max_epochs=1, callbacks=[Grab()])
    assert len(step_losses) == len(loader)
    assert trainer.history[0]["loss"] == pytest.approx(sum(step_losses) / len(step_losses))


def test_trainer_actually_steps_the_optimizer():
    task = RegressionTask()
    before = task.model.weight.detach().clone()
    _fit(task, _regression_loader(), max_epochs=1)
    assert not torch.equal(before, task.model.weight.detach())


def test_scheduler_stepped_every_optimizer_step():
    task = RegressionTask()
    loader = _regression_loader()
    trainer = Trainer(device="cpu", max_epochs=2)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer.fit(task, loader, optimizer, scheduler)
    steps = len(loader)
    assert trainer.history[0]["lr"] == pytest.approx(0.1 * 0.5 ** steps)
    assert trainer.history[1]["lr"] == pytest.approx(0.1 * 0.5 ** (2 * steps))


def test_callback_hooks_order_and_counts():
    log = []
    task = RegressionTask(log=log)
    loader = _regression_loader(n=48, batch=16)  # 3 steps per epoch
    _fit(task, loader, max_epochs=2, callbacks=[Recorder(log)])
    expected = [("train_begin",)]
    step = 0
    for epoch in range(2):
        # the task prepares the epoch before callbacks see it
        expected += [("task_epoch_begin", epoch), ("epoch_begin", epoch)]
        for _ in range(3):
            step += 1
            expected.append(("batch_end", step))
        expected += [("task_epoch_end", epoch), ("epoch_end", epoch)]
    expected.append(("train_end",))
    assert log == expected


def test_callback_can_stop_training():
    log = []
    task = RegressionTask()
    trainer = _fit(task, _regression_loader(), max_epochs=10,
                   callbacks=[Recorder(log, stop_after_epoch=1)])
    assert len(trainer.history) == 2
    assert trainer.epoch == 2
    assert log[-1] == ("train_end",)
    assert sum(1 for e in log if e[0] == "epoch_begin") == 2


def test_fit_resumes_from_current_epoch():
    task = RegressionTask()
    loader = _regression_loader()
    trainer = Trainer(device="cpu", max_epochs=2)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1)
    trainer.fit(task, loader, optimizer)
    trainer.max_epochs = 3
    trainer.fit(task, loader, optimizer)
    assert [r["epoch"] for r in trainer.history] == [1, 2, 3]
    assert task.optimizer_steps == list(range(3 * len(loader)))


def test_the_loss_is_checked_every_step_on_the_cpu_and_per_epoch_elsewhere():
    assert default_check_every("cpu") == 1
    assert default_check_every(torch.device("cuda", 1)) == 0
    assert default_check_every("mps") == 0


@pytest.mark.parametrize("check_every", [None, 1000, 0])
def test_nonfinite_loss_raises(check_every):
    log = []
    task = RegressionTask(nan_at_step=2)
    with pytest.raises(NonFiniteLossError, match="learning rate") as excinfo:
        _fit(task, _regression_loader(), max_epochs=3, callbacks=[Recorder(log)],
             check_every=check_every)
    assert isinstance(excinfo.value, FloatingPointError)
    assert "epoch 1" in str(excinfo.value)
    assert log[-1] == ("train_end",)  # callbacks still closed
    assert not any(e[0] == "epoch_end" for e in log)
    if check_every is None:
        # on CPU every step is checked: the bad step never reaches the optimiser
        assert task.optimizer_steps == [0, 1]
        assert torch.isfinite(task.model.weight).all()
    elif check_every == 0:
        # checked at the epoch's end only: the whole epoch ran
        assert len(task.optimizer_steps) == len(_regression_loader())


def test_nonfinite_loss_in_a_later_epoch_names_it():
    task = RegressionTask(nan_at_step=5)  # 4 steps per epoch: epoch 2
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        _fit(task, _regression_loader(), max_epochs=3)


def test_empty_loader_raises():
    with pytest.raises(ValueError, match="no batch"):
        _fit(RegressionTask(), [], max_epochs=1)


def test_resolve_amp():
    from skcueco.training.device import cpu_has_native_bf16

    cpu = torch.device("cpu")
    # "auto" on the CPU follows the processor (tests/test_cpu_amp.py)
    assert resolve_amp("auto", cpu) is (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert resolve_amp(None, cpu) is None
    assert resolve_amp(False, cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp(True, cpu) is torch.bfloat16
    assert resolve_amp("fp16", cpu) is torch.float16
    for bad in ("fp32", "bfloat16", 16):
        with pytest.raises(ValueError, match="amp"):
            resolve_amp(bad, cpu)
    with pytest.raises(ValueError):
        Trainer(device="cpu", max_epochs=1, amp="nope")


def test_bf16_autocast_runs_on_cpu():
    task = RegressionTask()
    trainer = _fit(task, _regression_loader(), max_epochs=2, amp="bf16", lr=0.05)
    assert trainer.amp_dtype is torch.bfloat16
    # the step ran inside autocast: the linear layer computed in bf16
    assert task.output_dtypes and all(d is torch.bfloat16 for d in task.output_dtypes)
    assert task.model.weight.dtype is torch.float32  # master weights stay fp32
    for record in trainer.history:
        for key in ("loss", "mae"):
            assert type(record[key]) is float
            assert math.isfinite(record[key])
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"]


def test_no_autocast_by_default():
    task = RegressionTask()
    _fit(task, _regression_loader(), max_epochs=1)
    assert all(d is torch.float32 for d in task.output_dtypes)


# ----------------------------------------------------------------------------- CueCo


N_SAMPLES, N_FEATURES, BATCH = 64, 12, 16


def _cueco_setup(*, max_epochs, cluster_warmup, cluster_update="online",
                 cluster_weight=0.5, queue_size=32, amp=None):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N_SAMPLES, N_FEATURES, generator=g)
    loader = [X[i:i + BATCH] for i in range(0, N_SAMPLES, BATCH)]
    backbone = nn.Sequential(
        nn.Flatten(), nn.Linear(N_FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU()
    )
    model = CueCoModel(
        backbone, 16, projection_dim=8, hidden_dim=32, queue_size=queue_size,
        n_clusters=3, generator=torch.Generator().manual_seed(1),
    )
    calls = {"key_features": 0}

    def key_features():
        calls["key_features"] += 1
        was_training = model.training
        model.eval()
        try:
            return model.encode_key(X)
        finally:
            model.train(was_training)

    task = CueCoTask(
        model, nn.Identity(), VectorAugmentation(noise_std=0.1, mask_p=0.2),
        torch.Generator().manual_seed(2),
        total_steps=max_epochs * len(loader), key_momentum=0.99,
        cluster_weight=cluster_weight, cluster_warmup=cluster_warmup,
        cluster_update=cluster_update, key_features=key_features, reseed_after=10**6,
    )
    trainer = Trainer(device="cpu", max_epochs=max_epochs, amp=amp)
    optimizer = torch.optim.SGD(model.query_parameters(), lr=0.05, momentum=0.9)
    return model, task, trainer, loader, optimizer, calls


class StateRecorder(Callback):
    """Records the CueCo state at each epoch boundary."""

    def __init__(self, model, calls):
        self.model, self.calls = model, calls
        self.ready_at_begin, self.ready_at_end = [], []
        self.kmeans_calls_at_begin = []
        self.centroids_at_begin = []

    def on_epoch_begin(self, trainer, epoch):
        self.ready_at_begin.append(bool(self.model.centroids_ready))
        self.kmeans_calls_at_begin.append(self.calls["key_features"])
        self.centroids_at_begin.append(self.model.centroids.clone())

    def on_epoch_end(self, trainer, epoch, logs):
        self.ready_at_end.append(bool(self.model.centroids_ready))


def test_cueco_warmup_then_clustering_online():
    model, task, trainer, loader, optimizer, calls = _cueco_setup(
        max_epochs=3, cluster_warmup=1
    )
    rec = StateRecorder(model, calls)
    trainer.callbacks.append(rec)
    queue_before = model.queue.keys.clone()
    key_before = [p.clone() for p in model.key_parameters()]
    trainer.fit(task, loader, optimizer)

    h = trainer.history
    assert len(h) == 3
    assert [r["cluster_weight"] for r in h] == [0.0, 0.5, 0.5]
    assert h[0]["clustering"] == 0.0
    assert h[1]["clustering"] > 0 and h[2]["clustering"] > 0
    for r in h:
        assert math.isfinite(r["loss"])
        # epoch means are linear: loss = contrastive + lambda * clustering
        assert r["loss"] == pytest.approx(
            r["contrastive"] + r["cluster_weight"] * r["clustering"], rel=1e-5
        )
    # centroids are created when warm-up ends (start of epoch 1), not before
    assert rec.ready_at_begin == [False, True, True]
    assert rec.ready_at_end == [False, True, True]
    assert task.centroids_ready
    # online mode: k-means runs once, then centroids move by online updates
    assert calls["key_features"] == 1
    assert rec.kmeans_calls_at_begin == [0, 1, 1]
    assert not torch.equal(rec.centroids_at_begin[1], model.centroids)
    torch.testing.assert_close(model.centroids.norm(dim=1), torch.ones(3))
    # the other state updates happened too
    assert not torch.equal(queue_before, model.queue.keys)
    assert any(not torch.equal(a, b) for a, b in zip(key_before, model.key_parameters()))
    for p in model.key_parameters():
        assert p.grad is None


def test_cueco_epoch_update_reruns_kmeans_each_epoch():
    model, task, trainer, loader, optimizer, calls = _cueco_setup(
        max_epochs=3, cluster_warmup=1, cluster_update="epoch"
    )
    rec = StateRecorder(model, calls)
    trainer.callbacks.append(rec)
    trainer.fit(task, loader, optimizer)
    # k-means once at the start of every epoch after warm-up
    assert rec.kmeans_calls_at_begin == [0, 1, 2]
    assert calls["key_features"] == 2
    assert [r["cluster_weight"] for r in trainer.history] == [0.0, 0.5, 0.5]
    # no online update in "epoch" mode: the centroids stay those of the last k-means
    assert torch.equal(rec.centroids_at_begin[2], model.centroids)


def test_cueco_zero_weight_never_builds_centroids():
    model, task, trainer, loader, optimizer, calls = _cueco_setup(
        max_epochs=2, cluster_warmup=0, cluster_weight=0.0
    )
    trainer.fit(task, loader, optimizer)
    assert calls["key_features"] == 0
    assert not task.centroids_ready
    assert all(r["cluster_weight"] == 0.0 and r["clustering"] == 0.0 for r in trainer.history)


def test_cueco_bf16_on_cpu():
    model, task, trainer, loader, optimizer, calls = _cueco_setup(
        max_epochs=2, cluster_warmup=1, amp="bf16"
    )
    trainer.fit(task, loader, optimizer)
    for r in trainer.history:
        for key in ("loss", "contrastive", "clustering"):
            assert type(r[key]) is float and math.isfinite(r[key])
    assert trainer.history[1]["clustering"] > 0
    assert model.queue.keys.dtype == torch.float32
    assert model.centroids.dtype == torch.float32

"""ProgressBar: the per-epoch bar and the per-batch bar that syncs rarely."""

import types

import pytest
import torch

import skcueco.callbacks as callbacks_module
from skcueco.callbacks import ProgressBar


class FakeClock:
    """``monotonic()`` that advances only when told to."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(callbacks_module, "time", fake)
    return fake


@pytest.fixture
def host_reads(monkeypatch):
    """Count every way a tensor's value can reach the host."""
    reads = []
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(self)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def fake_trainer(**attrs):
    return types.SimpleNamespace(max_epochs=2, epoch=0, is_main_process=True, **attrs)


def run_epoch(bar, trainer, clock, epoch, n_steps, seconds_per_step, loss=2.0):
    bar.on_epoch_begin(trainer, epoch)
    for step in range(n_steps):
        clock.now += seconds_per_step
        bar.on_batch_end(trainer, step + 1, {"loss": torch.tensor(loss),
                                             "contrastive": torch.tensor(loss)})


def test_per_batch_reads_the_loss_at_most_once_per_interval(clock, host_reads, capsys):
    trainer = fake_trainer(steps_per_epoch=100, batch_size=32)
    bar = ProgressBar(per_batch=True, mininterval=1.0)
    bar.on_train_begin(trainer)
    # 100 steps of 0.1 s: 10 s, so about 10 reads, not 100
    run_epoch(bar, trainer, clock, epoch=0, n_steps=100, seconds_per_step=0.1)
    assert 9 <= len(host_reads) <= 10
    assert bar._bar.n == 100
    # the mean of the steps since the last read; 10 steps of 32 images in 1 s
    assert bar._bar.postfix == "320 img/s, loss=2.0000"
    bar.on_epoch_end(trainer, 0, {"loss": 1.5, "seconds": 4.0})
    bar.on_train_end(trainer)
    err = capsys.readouterr().err
    assert "CueCo 1/2: " in err  # the epoch in the label
    assert ": :" not in err
    assert "100/100" in err and "100%" in err  # steps out of the epoch's total
    assert "800 img/s, loss=1.5000" in err  # the epoch's: 3200 images in 4 s


def test_per_batch_shows_the_mean_loss_since_the_last_read(clock, host_reads):
    trainer = fake_trainer(steps_per_epoch=4)
    bar = ProgressBar(per_batch=True, mininterval=1.0)
    bar.on_train_begin(trainer)
    bar.on_epoch_begin(trainer, 0)
    for loss in (1.0, 2.0, 3.0):  # no time passes: summed on the device, not read
        bar.on_batch_end(trainer, 1, {"loss": torch.tensor(loss)})
    assert host_reads == []
    clock.now += 1.0
    bar.on_batch_end(trainer, 4, {"loss": torch.tensor(6.0)})
    assert len(host_reads) == 1
    assert bar._bar.postfix == "loss=3.0000"  # (1 + 2 + 3 + 6) / 4; no batch size, no img/s
    bar.on_train_end(trainer)


def test_per_batch_restarts_every_epoch_and_works_without_a_total(clock, host_reads, capsys):
    trainer = fake_trainer()  # neither steps_per_epoch nor batch_size
    bar = ProgressBar(per_batch=True, desc="run")
    bar.on_train_begin(trainer)
    run_epoch(bar, trainer, clock, epoch=0, n_steps=7, seconds_per_step=0.5)
    bar.on_epoch_end(trainer, 0, {"loss": 1.0})
    run_epoch(bar, trainer, clock, epoch=1, n_steps=5, seconds_per_step=0.5)
    assert bar._bar.n == 5 and bar._bar.total is None
    bar.on_epoch_end(trainer, 1, {"loss": 0.5})
    bar.on_train_end(trainer)
    err = capsys.readouterr().err
    assert "run 2/2: " in err
    assert ": :" not in err  # tqdm's own colon is not doubled without a total
    assert "step/s" in err and "%" not in err
    assert len(host_reads) <= 6  # every second step at most, never every step


def test_per_batch_is_silent_and_never_syncs_off_the_main_process(clock, host_reads, capsys):
    trainer = fake_trainer(steps_per_epoch=10)
    trainer.is_main_process = False
    bar = ProgressBar(per_batch=True)
    bar.on_train_begin(trainer)
    run_epoch(bar, trainer, clock, epoch=0, n_steps=10, seconds_per_step=5.0)
    bar.on_epoch_end(trainer, 0, {"loss": 1.0})
    bar.on_train_end(trainer)
    assert host_reads == []
    assert capsys.readouterr().err == ""


def test_per_epoch_bar_ignores_batches(clock, host_reads, capsys):
    trainer = fake_trainer()
    bar = ProgressBar()
    bar.on_train_begin(trainer)
    run_epoch(bar, trainer, clock, epoch=0, n_steps=10, seconds_per_step=5.0)
    bar.on_epoch_end(trainer, 0, {"loss": 0.25})
    bar.on_train_end(trainer)
    assert host_reads == []
    err = capsys.readouterr().err
    assert "1/2" in err and "loss=0.2500" in err


def test_batch_size_argument_wins_over_the_trainer(clock, capsys):
    trainer = fake_trainer(steps_per_epoch=2, batch_size=1000)
    bar = ProgressBar(per_batch=True, batch_size=10)
    bar.on_train_begin(trainer)
    run_epoch(bar, trainer, clock, epoch=0, n_steps=2, seconds_per_step=0.1)
    bar.on_epoch_end(trainer, 0, {"loss": 1.0, "seconds": 0.2})
    bar.on_train_end(trainer)
    err = capsys.readouterr().err
    assert "2/2" in err
    assert "100 img/s" in err  # 2 steps of 10 images in 0.2 s (not of 1000)


def test_images_per_second_count_every_process(clock, capsys, monkeypatch):
    monkeypatch.setattr(callbacks_module, "get_world_size", lambda: 4)
    trainer = fake_trainer(steps_per_epoch=5, batch_size=8)
    bar = ProgressBar(per_batch=True)
    bar.on_train_begin(trainer)
    run_epoch(bar, trainer, clock, epoch=0, n_steps=5, seconds_per_step=0.1)
    bar.on_epoch_end(trainer, 0, {"loss": 1.0, "seconds": 2.0})
    bar.on_train_end(trainer)
    assert "80 img/s" in capsys.readouterr().err  # 5 steps of 4 x 8 images in 2 s


def test_verbose_2_shows_each_epoch_out_of_its_steps(capsys):
    from sklearn.datasets import load_digits

    from skcueco import CueCoEmbedder

    X = load_digits().data[:200]
    CueCoEmbedder(max_epochs=2, batch_size=64, hidden_dim=64, projection_dim=32,
                  queue_size=128, n_clusters=5, device="cpu", verbose=2,
                  random_state=0).fit(X)
    err = capsys.readouterr().err
    # 200 rows in batches of 64, the last partial one dropped: 3 steps
    assert "CueCo 1/2: 100%" in err and "CueCo 2/2: 100%" in err
    assert "3/3 [" in err
    assert ": :" not in err
    assert "img/s" in err and "loss=" in err

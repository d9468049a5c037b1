"""The training step reads nothing back to the host.

On a GPU every read of a tensor's value (``.item()``, ``.tolist()``,
``bool(t)``, ``.cpu()``...) waits for the device to finish its queue. The CPU
runs the same code paths, so counting those reads here shows whether any of
them sits between the steps of an epoch. The epoch's own checks (the loss and
state finite check, the history means) share one read after its last step;
the data loader's sampler draws its index permutation on the host by design
and is not counted.
"""

import sys
import warnings

import numpy as np
import pytest
import torch

from skcueco import CueCoEmbedder
from skcueco.callbacks import Callback
from skcueco.training import engine


class StepReads(Callback):
    """Counts host reads from the start of each epoch to its last step."""

    def __init__(self):
        self.counting = False
        self.reads = []  # names of the reads seen while counting
        self.per_epoch = []  # reads up to the last on_batch_end, per epoch
        self.steps = 0

    def on_epoch_begin(self, trainer, epoch):
        self.counting = True
        self.per_epoch.append(0)

    def on_batch_end(self, trainer, step, logs):
        self.per_epoch[-1] = len(self.reads)
        self.steps += 1

    def on_epoch_end(self, trainer, epoch, logs):
        self.counting = False
        del self.reads[:]


@pytest.fixture
def step_reads(monkeypatch):
    probe = StepReads()
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            # the sampler's index permutation is a host tensor by design
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if probe.counting and not caller.startswith("torch.utils.data"):
                probe.reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # the non-finite check as on a GPU, not at every step as on the CPU
    init = engine.Trainer.__init__

    def gpu_interval(self, *args, **kwargs):
        kwargs["check_every"] = engine.default_check_every("cuda")
        init(self, *args, **kwargs)

    monkeypatch.setattr(engine.Trainer, "__init__", gpu_interval)
    return probe


def test_the_probe_sees_a_read_in_a_step(step_reads):
    # the probe itself: a read between the steps is counted
    class ReadsTheLoss(Callback):
        def on_batch_end(self, trainer, step, logs):
            logs["loss"].item()

    X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CueCoEmbedder(backbone="mlp", max_epochs=1, batch_size=32, n_clusters=2,
                      random_state=0, callbacks=[ReadsTheLoss(), step_reads]).fit(X)
    assert step_reads.per_epoch == [2]


@pytest.mark.parametrize("params", [
    dict(cluster_balance=0.0, cluster_update="online"),
    dict(cluster_update="online"),
    dict(cluster_balance=0.0, cluster_update="epoch"),
    dict(cluster_weight=0.0),
], ids=["argmax-online", "sinkhorn-online", "argmax-epoch", "moco"])
def test_no_host_read_between_the_steps_of_an_epoch(step_reads, params):
    X = np.random.default_rng(0).normal(size=(160, 8)).astype(np.float32)
    est = CueCoEmbedder(
        backbone="mlp", max_epochs=3, batch_size=32, n_clusters=3, queue_size=64,
        cluster_warmup=1, cluster_ramp=1, random_state=0, callbacks=[step_reads],
        **params,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    assert step_reads.steps == 15  # 5 steps in each of 3 epochs, centroids on from epoch 2
    assert step_reads.per_epoch == [0, 0, 0]

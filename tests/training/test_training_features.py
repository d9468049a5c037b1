"""Tests of CueCoEmbedder's training features: resuming from checkpoints,
warm_start, partial_fit, interruption, mixed precision, optimisers and
schedules, channels-last and loader workers (save/load: tests/persistence).

Fits use 300 digits (8x8 grayscale images), batches of 64 (4 steps per epoch)
and at most three epochs on the CPU, where a seed gives bitwise-identical
results. To keep the file fast, a 3-epoch reference fit and a 1-epoch fit on
150 rows are shared by the tests that compare against them (on copies when
they train further).
"""

import copy
import gc
import math
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from torch import nn

from skcueco import CueCoEmbedder
from skcueco.training.optim import LARS, make_optimizer, warmup_cosine
from skcueco.callbacks import Callback, Checkpoint

PARAMS = dict(
    max_epochs=3, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=5, cluster_warmup=1, random_state=0, device="cpu",
)
STEPS_PER_EPOCH = 300 // 64  # drop_last
SMALL = dict(max_epochs=1)  # with X[:150]: 2 steps

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def params(**overrides):
    return {**PARAMS, **overrides}


@pytest.fixture(scope="module")
def X():
    return load_digits().data[:300]


@pytest.fixture(scope="module")
def ref(X):
    """A plain fit with PARAMS, and its embeddings of X."""
    est = CueCoEmbedder(**PARAMS).fit(X)
    return est, est.transform(X)


@pytest.fixture(scope="module")
def small(X):
    """A 1-epoch fit on X[:150] that spied on its training model, and its embeddings."""
    spy = AtTrainBegin()
    est = CueCoEmbedder(**params(**SMALL, callbacks=[spy])).fit(X[:150])
    return est, est.transform(X[:150]), spy


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_states_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


class StopAfter(Callback):
    """Asks the trainer to stop after ``n`` finished epochs."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, trainer, epoch, logs):
        if trainer.epoch >= self.n:
            trainer.stop_training = True


class InterruptIn(Callback):
    """Raises KeyboardInterrupt after the ``step``-th optimiser step of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch, step=1):
        self.epoch, self.step, self._n = epoch, step, 0

    def on_batch_end(self, trainer, step, logs):
        if trainer.epoch == self.epoch:
            self._n += 1
            if self._n == self.step:
                raise KeyboardInterrupt


class AtTrainBegin(Callback):
    """Copies the state of the model and optimiser as training starts."""

    def on_train_begin(self, trainer):
        self.model = _state(trainer.task.model)
        self.optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        self.epoch, self.global_step = trainer.epoch, trainer.global_step
        self.model_ref = weakref.ref(trainer.task.model)


class GrabOptimizer(Callback):
    def on_train_begin(self, trainer):
        self.optimizer = trainer.optimizer


# -- resuming from a checkpoint ---------------------------------------------------


@pytest.fixture(scope="module")
def resumed(X, ref, tmp_path_factory):
    """A (3 epochs: the reference), B (the same run, checkpointed and stopped
    after epoch 2), C (a new estimator resumed from B's epoch-2 checkpoint)."""
    ckpt_dir = tmp_path_factory.mktemp("resume")
    a = ref[0]
    b = CueCoEmbedder(**params(callbacks=[Checkpoint(ckpt_dir, keep_last=5),
                                          StopAfter(2)])).fit(X)
    c = CueCoEmbedder(**PARAMS).fit(X, resume_from=ckpt_dir / "epoch-0002.pt")
    return a, b, c, ckpt_dir


def test_resume_equals_uninterrupted_run(resumed, X):
    a, b, c, _ = resumed
    assert b.n_iter_ == 2
    assert c.n_iter_ == 3
    _assert_states_equal(_state(c.encoder_), _state(a.encoder_))
    _assert_states_equal(_state(c._trained.projector), _state(a._trained.projector))
    assert_array_equal(c.cluster_centers_, a.cluster_centers_)
    assert_array_equal(c.transform(X), a.transform(X))
    assert_array_equal(c.predict(X), a.predict(X))
    pd.testing.assert_frame_equal(c.history_.drop(columns="seconds"),
                                  a.history_.drop(columns="seconds"), check_exact=True)
    # and the run really was cut: B's model is not A's
    assert not np.array_equal(b.transform(X), a.transform(X))


def test_resume_from_checkpoint_of_other_parameters(resumed, X):
    *_, ckpt_dir = resumed
    est = CueCoEmbedder(**params(projection_dim=16))
    with pytest.raises(ValueError, match="does not match"):
        est.fit(X, resume_from=ckpt_dir / "epoch-0002.pt")
    assert not hasattr(est, "encoder_")


def test_resume_from_non_checkpoint_files(tmp_path, X, ref):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.RandomState(0).bytes(1000))
    with pytest.raises(ValueError, match="checkpoint"):
        CueCoEmbedder(**PARAMS).fit(X, resume_from=junk)
    # a real torch file, but a saved model rather than a training state
    model_file = tmp_path / "model.pt"
    ref[0].save(model_file)
    with pytest.raises(ValueError):
        CueCoEmbedder(**PARAMS).fit(X, resume_from=model_file)
    with pytest.raises(FileNotFoundError):
        CueCoEmbedder(**PARAMS).fit(X, resume_from=tmp_path / "missing.pt")


# -- warm_start -------------------------------------------------------------------


def test_warm_start_continues_training(X, ref):
    ref_est, ref_Z = ref
    spy = AtTrainBegin()
    # the first fit of a warm_start estimator is a plain fit: reuse the reference
    est = copy.deepcopy(ref_est).set_params(warm_start=True)
    first_state = copy.deepcopy(est._trained.train_state)
    first_Z = est.transform(X)
    assert (first_state["epoch"], first_state["global_step"]) == (3, 3 * STEPS_PER_EPOCH)

    est.set_params(callbacks=[spy])
    est.fit(X)
    assert est.n_iter_ == 6
    assert len(est.history_) == 6
    assert_array_equal(est.history_["epoch"], np.arange(1, 7))
    pd.testing.assert_frame_equal(est.history_.iloc[:3].drop(columns="seconds"),
                                  ref_est.history_.drop(columns="seconds"), check_exact=True)
    assert est._trained.train_state["epoch"] == 6
    assert est._trained.train_state["global_step"] == 6 * STEPS_PER_EPOCH
    Z = est.transform(X)
    assert not np.array_equal(Z, first_Z)
    assert not np.array_equal(Z, ref_Z)
    assert np.all(np.isfinite(Z))
    # the second fit started from the first one's weights, queue, centroids
    # and optimiser state
    assert (spy.epoch, spy.global_step) == (3, 3 * STEPS_PER_EPOCH)
    _assert_states_equal(spy.model, first_state["task"]["model"])
    assert bool(spy.model["centroids_ready"])
    first_buffers = [s["momentum_buffer"] for s in first_state["optimizer"]["state"].values()]
    spy_buffers = [s["momentum_buffer"] for s in spy.optimizer["state"].values()]
    assert len(first_buffers) == len(spy_buffers) > 0
    for a, b in zip(first_buffers, spy_buffers):
        assert torch.equal(a, b)
    # a new cosine cycle without warm-up: the 4th epoch's lr is back up
    lr = est.history_["lr"].to_numpy()
    assert lr[3] > lr[2] and lr[5] < lr[3]


def test_warm_start_false_refits_from_scratch(X, ref, small):
    _, ref_Z = ref
    # fitted before on other data, for another length: nothing of it may remain
    est = copy.deepcopy(small[0]).set_params(max_epochs=3, callbacks=None)
    assert not est.warm_start
    est.fit(X)
    assert est.n_iter_ == 3
    assert len(est.history_) == 3
    assert est._trained.train_state["epoch"] == 3
    assert est._trained.train_state["global_step"] == 3 * STEPS_PER_EPOCH
    assert_array_equal(est.transform(X), ref_Z)


# -- partial_fit ------------------------------------------------------------------


def test_partial_fit_adds_one_epoch_per_call(X):
    X = X[:150]  # 2 steps per epoch
    est = CueCoEmbedder(**PARAMS)
    est.partial_fit(X)
    assert est.n_iter_ == 1
    assert est._trained.train_state["global_step"] == 2
    Z1 = est.transform(X)
    est.partial_fit(X)
    assert est.n_iter_ == 2
    est.partial_fit(X)
    assert est.n_iter_ == 3
    assert est._trained.train_state["global_step"] == 3 * 2
    assert_array_equal(est.history_["epoch"], [1, 2, 3])
    lr = est.history_["lr"].to_numpy()
    assert np.all(lr == lr[0]) and lr[0] == pytest.approx(0.06 * 64 / 256)
    assert np.all(np.isfinite(est.history_["loss"]))
    # clustering starts after the warm-up epoch, across calls
    assert_array_equal(est.history_["cluster_weight"], [0.0, 1.0, 1.0])
    assert not np.array_equal(est.transform(X), Z1)


@pytest.fixture(scope="module")
def partial_once(X):
    return CueCoEmbedder(**PARAMS).partial_fit(X[:100])


@pytest.mark.parametrize("bad", [lambda X: np.hstack([X, X]), lambda X: X[:, :32]],
                         ids=["more", "fewer"])
def test_partial_fit_wrong_features_on_second_call(partial_once, X, bad):
    est = copy.deepcopy(partial_once)
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(bad(X[:100]))


def test_partial_fit_bad_input_keeps_the_trained_model(partial_once, X):
    """A partial_fit call rejected by input validation keeps the model
    trained so far: in a streaming loop, one bad batch must not lose it."""
    est = copy.deepcopy(partial_once)
    Z = est.transform(X[:100])
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(X[:100, :32])
    assert est.n_iter_ == 1
    assert_array_equal(est.transform(X[:100]), Z)
    # and a repeated bad call must not silently start a new model on it
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(X[:100, :32])


# -- KeyboardInterrupt ------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(X, tmp_path_factory):
    ckpt_dir = tmp_path_factory.mktemp("interrupt")
    est = CueCoEmbedder(**params(callbacks=[Checkpoint(ckpt_dir, keep_last=5),
                                            InterruptIn(epoch=2, step=2)]))
    with pytest.warns(RuntimeWarning) as record:
        returned = est.fit(X)
    return est, returned, record, ckpt_dir


def test_keyboard_interrupt_keeps_last_complete_epoch(interrupted):
    est, returned, record, ckpt_dir = interrupted
    assert returned is est
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert any("interrupted" in m and "epoch 3" in m for m in messages), messages
    assert est.n_iter_ == 2
    assert len(est.history_) == 2
    assert sorted(p.name for p in ckpt_dir.glob("*.pt")) == ["epoch-0001.pt", "epoch-0002.pt"]
    saved = torch.load(ckpt_dir / "epoch-0002.pt", weights_only=True)["task"]["model"]
    weights = {k[len("backbone_q."):]: v for k, v in saved.items()
               if k.startswith("backbone_q.")}
    _assert_states_equal(_state(est.encoder_), weights)


def test_keyboard_interrupt_training_state_is_that_of_last_epoch(interrupted):
    """After an interrupt the model is rolled back to epoch 2, but the rest of
    ``_train_state`` (step counter, optimiser momentum, random streams) is
    left at the interrupted step, so a warm_start/partial_fit continues from
    an inconsistent state."""
    est, _, _, ckpt_dir = interrupted
    saved = torch.load(ckpt_dir / "epoch-0002.pt", weights_only=True)
    state = est._trained.train_state
    assert state["epoch"] == 2
    _assert_states_equal(state["task"]["model"], saved["task"]["model"])
    assert state["global_step"] == saved["global_step"] == 2 * STEPS_PER_EPOCH
    for key in ("augmentation_rng", "loader_rng"):
        assert torch.equal(state["task"][key], saved["task"][key]), key
    for i, s in saved["optimizer"]["state"].items():
        assert torch.equal(state["optimizer"]["state"][i]["momentum_buffer"],
                           s["momentum_buffer"]), i


# -- training state ---------------------------------------------------------------


def test_training_state_on_cpu_and_no_key_network_kept(small):
    est, _, spy = small
    tensors = list(_tensors(est._trained.train_state))
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    # the key network lives on in the training state only
    assert any(k.startswith("backbone_k.") for k in est._trained.train_state["task"]["model"])
    for name, value in vars(est).items():
        if isinstance(value, nn.Module):
            sub = [n for n, _ in value.named_modules()]
            assert not any("backbone_k" in n or "projector_k" in n for n in sub), name
    gc.collect()
    assert spy.model_ref() is None, "the training model (with its key network) is still alive"


@needs_cuda
def test_training_state_on_cpu_after_gpu_fit(X):
    est = CueCoEmbedder(**params(device="cuda", max_epochs=2)).fit(X)
    tensors = list(_tensors(est._trained.train_state))
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert est.device_.type == "cuda"
    assert next(est.encoder_.parameters()).device.type == "cuda"
    Z = est.transform(X)
    assert Z.dtype == np.float32 and np.all(np.isfinite(Z))
    est.set_params(warm_start=True).fit(X)  # the CPU state goes back to the GPU
    assert est.n_iter_ == 4


@needs_cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_gpu(X, amp):
    est = CueCoEmbedder(**params(device="cuda", amp=amp, channels_last=True)).fit(X)
    assert np.all(np.isfinite(est.history_["loss"]))
    Z = est.transform(X)
    assert Z.dtype == np.float32 and np.all(np.isfinite(Z))


# -- mixed precision, optimisers --------------------------------------------------


def test_bf16_autocast_on_cpu(X):
    # against full precision, whatever amp="auto" resolves to on this CPU
    ref_Z = CueCoEmbedder(**params(amp=False)).fit(X).transform(X)
    est = CueCoEmbedder(**params(amp="bf16")).fit(X)
    assert len(est.history_) == 3
    assert np.all(np.isfinite(est.history_[["loss", "contrastive", "clustering"]]))
    Z = est.transform(X)
    assert Z.dtype == np.float32
    assert np.all(np.isfinite(Z))
    assert not np.array_equal(Z, ref_Z)
    assert all(p.dtype == torch.float32 for p in est.encoder_.parameters())


@pytest.mark.parametrize("optimizer, cls", [("lars", LARS), ("adamw", torch.optim.AdamW)])
def test_other_optimizers_train(X, optimizer, cls):
    spy = GrabOptimizer()
    est = CueCoEmbedder(**params(max_epochs=2, optimizer=optimizer, callbacks=[spy])).fit(X)
    assert type(spy.optimizer) is cls
    assert len(est.history_) == 2
    assert np.all(np.isfinite(est.history_[["loss", "contrastive", "clustering"]]))
    # ~ln(1 + queue size) = 4.9 at the start; a loss far above means divergence
    assert est.history_["contrastive"].max() < 6.0
    Z = est.transform(X)
    assert np.all(np.isfinite(Z))
    untrained = CueCoEmbedder(**params(optimizer=optimizer))._fit_untrained(X)
    assert not np.allclose(Z, untrained.transform(X))


def test_lars_step_matches_hand_computation():
    w0 = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # ||w|| = 5
    b0 = torch.tensor([1.0, -1.0])
    w = nn.Parameter(w0.clone())
    b = nn.Parameter(b0.clone())
    lr, m, wd, eta = 0.5, 0.9, 0.1, 0.02
    opt = LARS([w, b], lr=lr, momentum=m, weight_decay=wd, eta=eta)
    grads = [(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0.5, 2.0])),
             (torch.tensor([[0.0, -1.0], [1.0, 1.0]]), torch.tensor([-1.0, 1.0]))]

    ew, eb = w0.clone(), b0.clone()
    buf_w = buf_b = None
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        # 2-D: trust ratio eta * ||w|| / ||g + wd w|| scales g + wd w
        u = gw + wd * ew
        trust = eta * ew.norm() / u.norm()
        buf_w = trust * u if buf_w is None else m * buf_w + trust * u
        ew = ew - lr * buf_w
        # 1-D: plain momentum SGD, no weight decay
        buf_b = gb if buf_b is None else m * buf_b + gb
        eb = eb - lr * buf_b
        torch.testing.assert_close(w.detach(), ew, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(b.detach(), eb, rtol=1e-6, atol=1e-7)

    # first step by hand: u = [[1.3, .4], [0, 2]], ||u|| = sqrt(5.85)
    first = w0 - lr * (eta * 5.0 / math.sqrt(5.85)) * torch.tensor([[1.3, 0.4], [0.0, 2.0]])
    w2 = nn.Parameter(w0.clone())
    opt2 = LARS([w2], lr=lr, momentum=m, weight_decay=wd, eta=eta)
    w2.grad = grads[0][0].clone()
    opt2.step()
    torch.testing.assert_close(w2.detach(), first, rtol=1e-6, atol=1e-7)


def test_lars_one_dim_equals_sgd_and_zero_weights_use_ratio_one():
    b_lars = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    b_sgd = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    lars = LARS([b_lars], lr=0.1, momentum=0.9, weight_decay=0.5)
    sgd = torch.optim.SGD([b_sgd], lr=0.1, momentum=0.9, weight_decay=0.0)
    for g in ([1.0, -1.0, 0.5], [0.2, 0.3, -2.0], [1.0, 1.0, 1.0]):
        b_lars.grad = torch.tensor(g)
        b_sgd.grad = torch.tensor(g)
        lars.step()
        sgd.step()
    torch.testing.assert_close(b_lars.detach(), b_sgd.detach())
    # all-zero 2-D weights: ratio 1 rather than 0 (which would never move them)
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.1, weight_decay=0.5)
    w.grad = torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.1))
    with pytest.raises(ValueError):
        LARS([w], lr=0.0)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("lars", LARS),
                                       ("adamw", torch.optim.AdamW)])
def test_make_optimizer_no_decay_on_one_dim(name, cls):
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)
    opt = make_optimizer(name, [*net.parameters(), frozen], lr=0.3, weight_decay=0.01)
    assert isinstance(opt, cls)
    assert len(opt.param_groups) == 2
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decayed["params"]) == ids([net[0].weight, net[2].weight])
    assert ids(plain["params"]) == ids([net[0].bias, net[1].weight, net[1].bias])
    assert all(g["lr"] == 0.3 for g in opt.param_groups)
    assert id(frozen) not in ids(decayed["params"]) | ids(plain["params"])


def test_warmup_cosine_schedule():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_cosine(opt, total_steps=20, warmup_steps=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs = np.array(lrs)
    # linear warm-up 0.4, 0.8, ..., 2.0, reaching the peak at its last step
    np.testing.assert_allclose(lrs[:5], [0.4, 0.8, 1.2, 1.6, 2.0])
    assert lrs.argmax() in (4, 5) and lrs.max() == pytest.approx(2.0)
    # then a monotone cosine decay that ends near 0
    assert np.all(np.diff(lrs[5:]) < 0)
    np.testing.assert_allclose(lrs[5 + 7], 2.0 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert lrs[-1] < 0.05
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # no warm-up: starts at the peak
    opt = torch.optim.SGD([p], lr=2.0)
    warmup_cosine(opt, total_steps=10, warmup_steps=0)
    assert opt.param_groups[0]["lr"] == 2.0


# -- channels_last, workers -------------------------------------------------------


def test_channels_last_on_cpu(X, small):
    _, ref_Z, _ = small
    est = CueCoEmbedder(**params(**SMALL, channels_last=True)).fit(X[:150])
    assert len(est.history_) == 1 and np.all(np.isfinite(est.history_["loss"]))
    Z = est.transform(X[:150])
    assert Z.shape == ref_Z.shape and Z.dtype == np.float32
    assert np.all(np.isfinite(Z))
    # the published encoder is back in the default memory format
    conv = next(m for m in est.encoder_.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous()
    # same numbers up to the rounding of another convolution kernel
    np.testing.assert_allclose(Z, ref_Z, rtol=1e-3, atol=1e-3)


def test_num_workers_gives_same_embeddings(X, small):
    _, ref_Z, _ = small
    est = CueCoEmbedder(**params(**SMALL, num_workers=1)).fit(X[:150])
    assert_array_equal(est.transform(X[:150]), ref_Z)

"""Nothing lost, nothing silently wrong (docs/reliability.rst).

Data loss: atomic model files and checkpoints (real SIGKILL / SIGINT in
subprocesses, a file size limit standing in for a full disk), checkpoint
folders that belong to one run. Silently wrong results: non-finite models,
values beyond float32, continuation after ``load``, resumes that do not fit
the run, loaded metadata that cannot work.
"""

import copy
import json
import os
import pickle
import random
import signal
import time
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits

try:
    import resource
except ImportError:  # not on Windows
    resource = None

from skcueco import CueCoEmbedder
from skcueco.callbacks import Callback, Checkpoint
from skcueco.cli import train as cli_train
from skcueco.training import engine
from skcueco.training.engine import NonFiniteLossError

FAST = dict(max_epochs=1, batch_size=32, hidden_dim=32, projection_dim=16, queue_size=64,
            n_clusters=3, cluster_warmup=0, device="cpu", random_state=0)
POSIX = pytest.mark.skipif(not hasattr(os, "fork") or resource is None,
                           reason="needs fork, POSIX signals and resource limits")


@pytest.fixture(scope="module")
def digits():
    """96 digits, 8x8 images in 0..16 (float64), read as (1, 8, 8) images."""
    X, _ = load_digits(return_X_y=True)
    return X[:96]


@pytest.fixture(scope="module")
def fitted(digits):
    """A fitted embedder (3 steps per epoch); tests work on copies."""
    return CueCoEmbedder(**FAST).fit(digits)


def _params(**overrides):
    return {**FAST, **overrides}


def _fork(work):
    """Run ``work(report)`` in a forked child process; returns ``(pid, reader)``.

    The child shares nothing with the test process after the fork (its own
    memory, resource limits and signal handlers); ``report(line)`` sends a
    line back through a pipe, read with ``reader.readline()``. The child
    never returns into pytest.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 0
        try:
            os.close(read_fd)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with os.fdopen(write_fd, "w", buffering=1) as pipe:
                def report(line):
                    pipe.write(line + "\n")
                    pipe.flush()

                try:
                    work(report)
                except BaseException as exc:  # noqa: BLE001 - told to the parent
                    report(json.dumps({"child_error": f"{type(exc).__name__}: {exc}"}))
                    status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, os.fdopen(read_fd)


def _wait(pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the child process did not end within {timeout} s")


def _read_result(pid, reader, timeout=60):
    lines = reader.read().splitlines()
    _wait(pid, timeout)
    results = [json.loads(line) for line in lines if line.startswith("{")]
    assert results, f"no result from the child: {lines}"
    assert "child_error" not in results[-1], results[-1]["child_error"]
    return results[-1]


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_model(a, b, X):
    assert a.n_iter_ == b.n_iter_
    assert_array_equal(a.transform(X), b.transform(X))
    assert_array_equal(a.cluster_centers_, b.cluster_centers_)


# -- 1. save() is atomic ------------------------------------------------------------


@POSIX
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_save_overwrite_killed_at_random_points_leaves_old_or_new_model(
        tmp_path, digits, signum):
    """A process killed (SIGKILL) or interrupted (SIGINT) while it overwrites
    a model file in a loop leaves either the old or the new model there, never
    a damaged file; after an interrupt no temporary file remains either."""
    big = dict(hidden_dim=1024, projection_dim=64)
    a = CueCoEmbedder(**_params(**big)).fit(digits[:64])
    b = CueCoEmbedder(**_params(**big, random_state=1)).fit(digits[:64])
    target = tmp_path / "m.pt"
    a.save(target)

    def overwrite_forever(report):
        report("ready")
        while True:
            a.save(target)
            b.save(target)

    rng = random.Random(signum)
    for _ in range(6):
        pid, reader = _fork(overwrite_forever)
        assert reader.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.2))
        os.kill(pid, signum)
        _wait(pid)
        reader.close()
        loaded = CueCoEmbedder.load(target)  # never a damaged file
        assert any(np.array_equal(loaded.cluster_centers_, ref.cluster_centers_)
                   for ref in (a, b))
        if signum == signal.SIGINT:
            assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


# -- 2. a checkpoint folder belongs to one run --------------------------------------


def test_checkpoint_never_overwrites_or_deletes_another_runs_files(tmp_path, digits):
    folder = tmp_path / "ckpt"
    CueCoEmbedder(**_params(max_epochs=2, callbacks=[Checkpoint(folder, keep_last=5)])).fit(
        digits)
    (folder / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ["epoch-0001.pt", "epoch-0002.pt", "notes.txt"]

    # another run (other seed) pointed at the same folder is refused up front
    other = CueCoEmbedder(**_params(max_epochs=2, random_state=1,
                                    callbacks=[Checkpoint(folder, keep_last=1)]))
    with pytest.raises(ValueError, match="another training run") as info:
        other.fit(digits)
    assert str(folder) in str(info.value) and "epoch-0001.pt" in str(info.value)
    assert not hasattr(other, "encoder_")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    # the run itself, resumed, owns the folder: it rotates its own files only
    ckpt = Checkpoint(folder, keep_last=1)
    resumed = CueCoEmbedder(**_params(max_epochs=3, callbacks=[ckpt]))
    resumed.fit(digits, resume_from=folder / "epoch-0002.pt")
    assert resumed.n_iter_ == 3
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0003.pt", "notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"


def _cli(argv):
    try:
        return cli_train.main(argv)
    except SystemExit as exc:  # CLI errors exit with status 2
        return exc.code


def test_cli_resume_picks_the_newest_checkpoint_of_the_run_not_another_runs(
        tmp_path, capsys):
    X = np.random.default_rng(0).integers(0, 256, size=(64, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "X.npy", X)
    common = ["--data", str(tmp_path / "X.npy"), "--batch-size", "32", "--device", "cpu",
              "--cluster-warmup", "0", "--quiet"]
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    assert _cli([*common, "--epochs", "2", "--checkpoint-dir", str(mine),
                 "--out", str(tmp_path / "first.pt")]) == 0
    assert _cli([*common, "--epochs", "2", "--random-state", "1", "--checkpoint-dir",
                 str(theirs), "--out", str(tmp_path / "other.pt")]) == 0
    # another run's checkpoint lands in the folder under a newer-looking name
    (theirs / "epoch-0002.pt").rename(mine / "epoch-0009.pt")
    capsys.readouterr()
    out = tmp_path / "resumed.pt"
    status = _cli([*common, "--epochs", "3", "--checkpoint-dir", str(mine), "--resume",
                   "--out", str(out)])
    assert status == 2, "resumed from another run's checkpoint"
    assert "epoch-0009.pt" in capsys.readouterr().err
    assert not out.exists()
    # without the stranger, --resume continues the run from its newest epoch
    (mine / "epoch-0009.pt").unlink()
    assert _cli([*common, "--epochs", "3", "--checkpoint-dir", str(mine), "--resume",
                 "--out", str(out)]) == 0
    first, resumed = CueCoEmbedder.load(tmp_path / "first.pt"), CueCoEmbedder.load(out)
    assert resumed.n_iter_ == 3
    assert_array_equal(resumed.history_["loss"].iloc[:2], first.history_["loss"])


# -- 3. Ctrl-C or a full disk while a checkpoint is written -------------------------


@POSIX
def test_ctrl_c_during_a_checkpoint_write_keeps_the_finished_epoch(tmp_path, digits,
                                                                    monkeypatch):
    folder = tmp_path / "ckpt"
    real_save = torch.save

    def train(report):
        def slow_save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
                report("writing")
                time.sleep(60)  # the parent's SIGINT lands here

        monkeypatch.setattr(torch, "save", slow_save)  # in the child only
        est = CueCoEmbedder(**_params(max_epochs=2,
                                      callbacks=[Checkpoint(folder, keep_last=5)]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(digits)
        report(json.dumps({
            "n_iter": est.n_iter_, "history": len(est.history_),
            "state_epoch": est._trained.train_state["epoch"],
            "files": sorted(os.listdir(folder)),
            "warnings": [str(w.message) for w in caught if "interrupted" in str(w.message)],
        }))

    pid, reader = _fork(train)
    assert reader.readline().strip() == "writing"
    os.kill(pid, signal.SIGINT)
    result = _read_result(pid, reader)
    # epoch 2 was finished: it is kept, not rolled back to epoch 1
    assert result["n_iter"] == result["history"] == result["state_epoch"] == 2
    assert result["warnings"] and "after epoch 2" in result["warnings"][0]
    # its checkpoint was not completed; no temporary file remains
    assert result["files"] == ["epoch-0001.pt"]


@POSIX
def test_full_disk_raises_oserror_naming_the_file_and_keeps_what_was_there(tmp_path,
                                                                            digits):
    folder, model = tmp_path / "ckpt", tmp_path / "model.pt"
    est = CueCoEmbedder(**_params(callbacks=[Checkpoint(folder, keep_last=5)])).fit(digits)
    est.save(model)
    model_bytes, ckpt_bytes = model.read_bytes(), (folder / "epoch-0001.pt").read_bytes()
    Z = est.transform(digits)

    def fill_the_disk(report):
        # a "full disk": no file may grow past half of either file
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = min(len(model_bytes), len(ckpt_bytes)) // 2
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        result = {}
        try:
            est.save(model)
        except Exception as exc:
            result["save"] = [type(exc).__name__, str(exc)]
        try:
            est.set_params(warm_start=True).fit(digits)
        except Exception as exc:
            result["checkpoint"] = [type(exc).__name__, str(exc)]
        fitted = hasattr(est, "n_iter_")
        result.update(n_iter=est.n_iter_ if fitted else None,
                      same_model=fitted and bool((est.transform(digits) == Z).all()))
        report(json.dumps(result))

    result = _read_result(*_fork(fill_the_disk))
    kind, message = result["save"]
    assert kind == "OSError", message
    assert str(model) in message and "left as it was" in message
    assert model.read_bytes() == model_bytes
    kind, message = result["checkpoint"]
    assert kind == "OSError", message
    assert "epoch-0002.pt" in message and "epoch-0001.pt" in message
    assert (folder / "epoch-0001.pt").read_bytes() == ckpt_bytes
    # no temporary file anywhere; the warm-started model is the one it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "model.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.pt"]
    assert result["n_iter"] == 1 and result["same_model"]


# -- 4. never publish a non-finite model --------------------------------------------


class CorruptAtStep(Callback):
    """Writes inf into one tensor of the training state after step ``step``."""

    def __init__(self, step, where):
        self.step, self.where = step, where

    def on_batch_end(self, trainer, step, logs):
        if step != self.step:
            return
        model = trainer.task.model
        with torch.no_grad():
            if self.where == "parameter":
                next(model.backbone_q.parameters()).view(-1)[0] = float("inf")
            elif self.where == "batchnorm":
                bn = next(m for m in model.backbone_q.modules() if hasattr(m, "running_var"))
                bn.running_var[0] = float("inf")
            elif self.where == "queue":
                model.queue.keys[0, 0] = float("nan")
            elif self.where == "centroids":
                model.centroids[0, 0] = float("nan")
            else:  # the optimiser's momentum
                state = trainer.optimizer.state[trainer.optimizer.param_groups[0]["params"][0]]
                state["momentum_buffer"].view(-1)[0] = float("inf")


@pytest.mark.parametrize("where", ["parameter", "batchnorm", "queue", "centroids",
                                   "optimizer"])
def test_a_last_step_that_diverges_raises_and_publishes_nothing(tmp_path, digits, where):
    """The loss of the last step is finite (it is computed before the update),
    so only a check of the state itself sees the divergence."""
    ckpt = Checkpoint(tmp_path, keep_last=5)
    est = CueCoEmbedder(**_params(max_epochs=2, callbacks=[CorruptAtStep(6, where), ckpt]))
    with pytest.raises(NonFiniteLossError, match="smaller `lr`"):
        est.fit(digits)
    assert not hasattr(est, "encoder_") and not hasattr(est, "_train_state")
    # the diverged epoch 2 was never checkpointed; epoch 1's state is finite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt"]
    state = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["task"]["model"].values()
               if v.is_floating_point())


def test_a_single_step_with_a_huge_learning_rate_publishes_nothing(digits):
    """One step (48 samples, batch 32): its loss is finite, its update leaves
    finite weights that overflow float32 in the forward pass."""
    est = CueCoEmbedder(**_params(lr=1e10))
    with pytest.raises(NonFiniteLossError, match="smaller `lr`"):
        est.fit(digits[:48])
    assert not hasattr(est, "encoder_")


def test_a_divergence_seen_only_at_the_end_of_the_epoch_keeps_the_previous_model(
        fitted, digits, monkeypatch):
    """As on a GPU, where the loss is read once per epoch: the steps after the
    first NaN loss still run, and the whole epoch is rolled back."""
    monkeypatch.setattr(engine, "default_check_every", lambda device: 0)
    est = copy.deepcopy(fitted)
    Z, history = est.transform(digits), est.history_.copy()
    est.set_params(warm_start=True, max_epochs=1,
                   callbacks=[CorruptAtStep(est._trained.train_state["global_step"] + 1, "parameter")])
    with pytest.raises(NonFiniteLossError, match="smaller `lr`"):
        est.fit(digits)
    assert_array_equal(est.transform(digits), Z)
    assert est.history_.equals(history)


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_divergence_in_a_continuation_keeps_the_previous_model(fitted, digits, how):
    est = copy.deepcopy(fitted)
    Z, history = est.transform(digits), est.history_.copy()
    train_state = copy.deepcopy(est._trained.train_state)
    est.set_params(callbacks=[CorruptAtStep(est._trained.train_state["global_step"] + 3,
                                            "parameter")])
    with pytest.raises(NonFiniteLossError):
        if how == "warm_start":
            est.set_params(warm_start=True).fit(digits)
        else:
            est.partial_fit(digits)
    assert est.n_iter_ == 1
    assert_array_equal(est.transform(digits), Z)
    assert est.history_.equals(history)
    # the kept training state is untouched (the optimiser had not aliased it)
    for i, s in train_state["optimizer"]["state"].items():
        assert torch.equal(est._trained.train_state["optimizer"]["state"][i]["momentum_buffer"],
                           s["momentum_buffer"])
    for key, value in train_state["task"]["model"].items():
        assert torch.equal(est._trained.train_state["task"]["model"][key], value), key


# -- 5. values beyond float32 -------------------------------------------------------


def test_values_beyond_float32_are_refused_up_front(fitted, digits):
    X = digits.copy()
    X[3, 10] = 1e40  # finite in float64, infinite in float32
    with pytest.raises(ValueError, match="float32"):
        CueCoEmbedder(**FAST).fit(X)
    for method in (fitted.transform, fitted.predict):
        with pytest.raises(ValueError, match="float32"):
            method(X)
    # each value fits float32, but centring their range would overflow
    spread = np.where(digits > 8, 3e38, -3e38)
    with pytest.raises(ValueError, match="float32"):
        CueCoEmbedder(**FAST).fit(spread)
    with pytest.raises(ValueError, match="float32"):
        CueCoEmbedder(**FAST, image_shape=None).fit(spread)


# -- 6. continuing a loaded or unpickled model --------------------------------------


def test_continuing_after_load_or_unpickling_is_continuing(tmp_path, fitted, digits):
    fitted.save(tmp_path / "m.pt")
    copies = {"loaded": CueCoEmbedder.load(tmp_path / "m.pt"),
              "unpickled": pickle.loads(pickle.dumps(fitted))}
    reference = copy.deepcopy(fitted).set_params(warm_start=True).fit(digits)
    partial = copy.deepcopy(fitted).partial_fit(digits)
    assert reference.n_iter_ == partial.n_iter_ == 2
    for name, est in copies.items():
        _assert_same_model(copy.deepcopy(est).set_params(warm_start=True).fit(digits),
                           reference, digits)
        _assert_same_model(copy.deepcopy(est).partial_fit(digits), partial, digits)


def test_a_weights_only_model_refuses_to_restart_silently(tmp_path, fitted, digits):
    fitted.save(tmp_path / "full.pt")
    fitted.save(tmp_path / "weights.pt", training_state=False)
    assert (tmp_path / "weights.pt").stat().st_size < (tmp_path / "full.pt").stat().st_size
    est = CueCoEmbedder.load(tmp_path / "weights.pt")
    Z = est.transform(digits)
    with pytest.raises(ValueError, match="training state"):
        est.set_params(warm_start=True).fit(digits)
    with pytest.raises(ValueError, match="training state"):
        est.partial_fit(digits)
    assert est.n_iter_ == 1
    assert_array_equal(est.transform(digits), Z)
    # a new fit is still possible, on purpose
    assert est.set_params(warm_start=False).fit(digits).n_iter_ == 1


# -- 7. resume_from checks that the checkpoint fits the run -------------------------


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    CueCoEmbedder(**_params(callbacks=[Checkpoint(folder)])).fit(digits)
    return folder / "epoch-0001.pt"


def _retouched(path, tmp_path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    out = tmp_path / "retouched.pt"
    torch.save(state, out)
    return out


def test_resume_refuses_a_checkpoint_of_other_input_or_version(tmp_path, checkpoint,
                                                                digits):
    # 8x8 images in the checkpoint, 12x12 images here
    X12 = np.repeat(np.repeat(digits.reshape(-1, 8, 8), 3, axis=1), 3, axis=2)[:, :12, :12]
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(1, 12, 12\)"):
        CueCoEmbedder(**FAST).fit(X12, resume_from=checkpoint)
    # the same images, scaled to another value range
    with pytest.raises(ValueError, match="value range"):
        CueCoEmbedder(**FAST).fit(digits / 16, resume_from=checkpoint)
    # a checkpoint written by a future version
    future = _retouched(checkpoint, tmp_path,
                        lambda s: s.setdefault("run", {}).update(version="99.0.0"))
    with pytest.raises(ValueError, match="99.0.0"):
        CueCoEmbedder(**FAST).fit(digits, resume_from=future)
    # another parameter that defines the model, named
    with pytest.raises(ValueError, match="cluster_loss='proto' in the checkpoint"):
        CueCoEmbedder(**_params(cluster_loss="pull")).fit(digits, resume_from=checkpoint)


# -- 8. a failed resume leaves a fitted estimator as it was -------------------------


def test_a_failed_resume_keeps_the_fitted_model(tmp_path, fitted, checkpoint, digits):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    # a checkpoint of a run with other parameters
    CueCoEmbedder(**_params(projection_dim=8, callbacks=[Checkpoint(tmp_path / "other")])
                  ).fit(digits)
    attempts = [(junk, ValueError), (tmp_path / "missing.pt", FileNotFoundError),
                (tmp_path / "other" / "epoch-0001.pt", ValueError)]
    for path, error in attempts:
        est = copy.deepcopy(fitted)
        before = dict(vars(est))
        Z = est.transform(digits)
        with pytest.raises(error):
            est.fit(digits, resume_from=path)
        assert vars(est).keys() == before.keys()
        assert all(vars(est)[k] is v for k, v in before.items())
        assert_array_equal(est.transform(digits), Z)


# -- 9. load() refuses metadata that cannot work ------------------------------------


def _edit_meta(path, out, change):
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    change(meta)
    payload["meta"] = json.dumps(meta)
    torch.save(payload, out)
    return out


def test_load_refuses_metadata_that_cannot_work(tmp_path, fitted):
    fitted.save(tmp_path / "m.pt")

    def zero_batch(meta):
        meta["params"]["batch_size"] = 0

    def other_shape(meta):
        meta["input_spec"][1] = [1, 12, 12]

    bad = _edit_meta(tmp_path / "m.pt", tmp_path / "batch.pt", zero_batch)
    with pytest.raises(ValueError, match="batch_size"):
        CueCoEmbedder.load(bad)
    bad = _edit_meta(tmp_path / "m.pt", tmp_path / "shape.pt", other_shape)
    with pytest.raises(ValueError, match=r"\[1, 12, 12\].*n_features_in=64"):
        CueCoEmbedder.load(bad)

"""Checkpoint folders under hostile conditions (docs/reliability.rst).

A process killed (SIGKILL) while it writes a checkpoint leaves a temporary
file and its lock file: the resumed run removes its own temporary files and
takes the lock over, and leaves other runs' temporary files alone. Two runs
started at the same moment on one folder: one trains, the other is refused.
A lock of a live process or of another host refuses a run; a lock taken by
another run while training stops the writes.
"""

import json
import os
import re
import signal
import socket
import time
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder
from skcueco.callbacks import Callback, Checkpoint
from skcueco.training.checkpoint import atomic_save, checkpoint_owner
from skcueco.training.folder_lock import LOCK_NAME

FAST = dict(max_epochs=1, batch_size=32, hidden_dim=32, projection_dim=16, queue_size=64,
            n_clusters=3, cluster_warmup=0, device="cpu", random_state=0)
POSIX = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals")


@pytest.fixture(scope="module")
def digits():
    """96 digits, 8x8 images in 0..16, read as (1, 8, 8) images."""
    X, _ = load_digits(return_X_y=True)
    return X[:96]


def _params(**overrides):
    return {**FAST, **overrides}


def _fork(work):
    """Run ``work(report)`` in a forked child; returns ``(pid, reader)``.

    ``report(line)`` sends a line back through a pipe; the child never
    returns into pytest.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 0
        try:
            os.close(read_fd)
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


def _dead_pid():
    """The id of a process of this host that has ended."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _write_lock(folder, **record):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run_id": "f" * 32, "pid": _dead_pid(), "host": socket.gethostname(),
              "started": "2024-01-01T00:00:00+0000", "token": "t", **record}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    return record


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


# -- 1. killed while writing: temporary files and the lock ---------------------------


def _killed_while_writing_epoch_2(folder, digits, resume_from=None):
    """A child fits 3 epochs; SIGKILL lands while it writes epoch 2's checkpoint."""
    real_save = torch.save

    def train(report):
        def slow_save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)  # the temporary file is complete ...
            if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
                report("writing")
                time.sleep(60)  # ... but not renamed when the kill lands

        torch.save = slow_save  # in the child only
        CueCoEmbedder(**_params(max_epochs=3, callbacks=[Checkpoint(folder)])).fit(
            digits, resume_from=resume_from)
        report("finished")

    pid, reader = _fork(train)
    line = reader.readline().strip()
    assert line == "writing", line
    os.kill(pid, signal.SIGKILL)
    _wait(pid)
    reader.close()
    return pid


@POSIX
def test_a_run_killed_while_writing_resumes_removing_its_temporary_files(tmp_path,
                                                                           digits):
    # the run never killed; fitted first, so that the children start warm
    straight = CueCoEmbedder(**_params(max_epochs=3)).fit(digits)
    folder = tmp_path / "ckpt"
    pid = _killed_while_writing_epoch_2(folder, digits)
    _, run_id = checkpoint_owner(folder / "epoch-0001.pt")
    temp = re.compile(rf"\.epoch-0002\.pt\.{run_id}\.[0-9a-f]{{12}}\.tmp")
    files = _names(folder)
    assert files[1:] == [LOCK_NAME, "epoch-0001.pt"], files
    assert temp.fullmatch(files[0]), files  # named after its run
    lock = json.loads((folder / LOCK_NAME).read_text())
    assert (lock["run_id"], lock["pid"]) == (run_id, pid)
    assert lock["host"] == socket.gethostname() and lock["started"]

    # killed again while resuming: still one temporary file, not two
    _killed_while_writing_epoch_2(folder, digits, resume_from=folder / "epoch-0001.pt")
    files = _names(folder)
    assert files[1:] == [LOCK_NAME, "epoch-0001.pt"] and temp.fullmatch(files[0]), files

    # temporary files of other runs (or untagged ones) are left and reported
    others = [f".epoch-0001.pt.{'a' * 32}.0123456789ab.tmp", ".epoch-0002.pt.0123456789ab.tmp"]
    for name in others:
        (folder / name).write_bytes(b"partial")
    resumed = CueCoEmbedder(**_params(max_epochs=3, callbacks=[Checkpoint(folder)]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.fit(digits, resume_from=folder / "epoch-0001.pt")
    messages = [str(w.message) for w in caught]
    assert any("took the lock over" in m and "no longer runs" in m for m in messages), messages
    assert any(all(name in m for name in others) and "left as they are" in m
               for m in messages), messages
    assert resumed.n_iter_ == 3
    assert _names(folder) == sorted([*others, "epoch-0002.pt", "epoch-0003.pt"])
    assert all(checkpoint_owner(folder / f"epoch-000{e}.pt") == (e, run_id) for e in (2, 3))
    assert_array_equal(resumed.transform(digits), straight.transform(digits))


def test_atomic_save_names_its_temporary_file_by_a_safe_tag(tmp_path):
    with pytest.raises(ValueError, match="tag="):
        atomic_save({"a": 1}, tmp_path / "x.pt", tag="../escape")
    assert _names(tmp_path) == []
    atomic_save({"a": 1}, tmp_path / "x.pt", tag="run_1")
    assert _names(tmp_path) == ["x.pt"]


# -- 2. one run at a time in a folder ------------------------------------------------


class _Hold(Callback):
    """Stays in ``on_train_begin`` a moment: the run holds the folder meanwhile."""

    def on_train_begin(self, trainer):
        time.sleep(0.5)


@POSIX
def test_two_runs_started_at_once_on_one_folder_one_trains_one_is_refused(tmp_path,
                                                                          digits):
    folder = tmp_path / "ckpt"
    go_read, go_write = os.pipe()

    def train(seed):
        def work(report):
            os.close(go_write)
            assert os.read(go_read, 1) == b"g"  # both start at the same moment
            est = CueCoEmbedder(**_params(max_epochs=2, random_state=seed,
                                          callbacks=[Checkpoint(folder), _Hold()]))
            try:
                est.fit(digits)
            except ValueError as exc:
                report(json.dumps({"seed": seed, "error": str(exc)}))
            else:
                run_id = checkpoint_owner(folder / "epoch-0002.pt")[1]
                report(json.dumps({"seed": seed, "run_id": run_id,
                                   "saved": [p.name for p in est.callbacks[0].saved_]}))
        return work

    children = [_fork(train(seed)) for seed in (1, 2)]
    os.close(go_read)
    os.write(go_write, b"gg")
    os.close(go_write)
    results = []
    for pid, reader in children:
        lines = reader.read().splitlines()
        _wait(pid)
        results.append(json.loads(lines[-1]))
    assert all("child_error" not in r for r in results), results
    trained = [r for r in results if "run_id" in r]
    refused = [r for r in results if "error" in r]
    assert len(trained) == 1 and len(refused) == 1, results
    message = refused[0]["error"]
    assert f"{folder} is in use by training run {trained[0]['run_id']}" in message
    assert "Use another folder" in message
    # the folder holds the winner's checkpoints only, and no lock any more
    assert _names(folder) == trained[0]["saved"] == ["epoch-0001.pt", "epoch-0002.pt"]
    assert {checkpoint_owner(folder / n)[1] for n in _names(folder)} == {trained[0]["run_id"]}


@POSIX
@pytest.mark.parametrize("holder", ["live process", "other host"])
def test_a_lock_that_may_be_live_refuses_the_run(tmp_path, digits, holder):
    folder = tmp_path / "ckpt"
    sleeper = os.fork()
    if sleeper == 0:
        time.sleep(30)
        os._exit(0)
    try:
        if holder == "live process":
            record = _write_lock(folder, pid=sleeper)
        else:  # a process id dead here says nothing about another machine
            record = _write_lock(folder, host="elsewhere.example")
        est = CueCoEmbedder(**_params(callbacks=[Checkpoint(folder)]))
        with pytest.raises(ValueError, match="is in use by training run") as info:
            est.fit(digits)
    finally:
        os.kill(sleeper, signal.SIGKILL)
        os.waitpid(sleeper, 0)
    assert f"process {record['pid']} on {record['host']}" in str(info.value)
    assert str(folder / LOCK_NAME) in str(info.value)  # what to delete if it is stale
    assert not hasattr(est, "n_iter_")
    assert _names(folder) == [LOCK_NAME]
    assert json.loads((folder / LOCK_NAME).read_text()) == record


@POSIX
@pytest.mark.parametrize("holder", ["dead process", "damaged"])
def test_a_stale_lock_is_taken_over(tmp_path, digits, holder):
    folder = tmp_path / "ckpt"
    record = _write_lock(folder)
    expected = f"process {record['pid']} no longer runs"
    if holder == "damaged":  # its writer died before it wrote the record
        (folder / LOCK_NAME).write_text('{"run_id": "')
        os.utime(folder / LOCK_NAME, (time.time() - 60, time.time() - 60))
        expected = "damaged"
    with pytest.warns(RuntimeWarning, match=expected):
        est = CueCoEmbedder(**_params(callbacks=[Checkpoint(folder)])).fit(digits)
    assert est.n_iter_ == 1
    assert _names(folder) == ["epoch-0001.pt"]  # released at the end


def test_a_lock_left_by_a_failed_start_in_this_process_is_taken_over(tmp_path, digits):
    class FailingStart(Callback):
        def on_train_begin(self, trainer):
            raise RuntimeError("no room for the logs")

    folder = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="no room"):
        CueCoEmbedder(**_params(callbacks=[Checkpoint(folder), FailingStart()])).fit(digits)
    assert _names(folder) == [LOCK_NAME]  # on_train_end never came
    with pytest.warns(RuntimeWarning, match="ended without releasing it"):
        est = CueCoEmbedder(**_params(callbacks=[Checkpoint(folder)])).fit(digits)
    assert est.n_iter_ == 1 and _names(folder) == ["epoch-0001.pt"]


def test_a_refused_folder_check_releases_the_lock(tmp_path, digits):
    folder = tmp_path / "ckpt"
    CueCoEmbedder(**_params(callbacks=[Checkpoint(folder)])).fit(digits)
    other = CueCoEmbedder(**_params(random_state=1, callbacks=[Checkpoint(folder)]))
    with pytest.raises(ValueError, match="another training run"):
        other.fit(digits)
    assert _names(folder) == ["epoch-0001.pt"]


def test_a_lock_taken_by_another_run_while_training_stops_the_writes(tmp_path, digits):
    folder = tmp_path / "ckpt"

    class TakenOver(Callback):
        def on_epoch_begin(self, trainer, epoch):
            if epoch == 1:  # after epoch 1 was saved
                (folder / LOCK_NAME).write_text(json.dumps(
                    {"run_id": "b" * 32, "pid": 1, "host": "elsewhere.example"}))

    est = CueCoEmbedder(**_params(max_epochs=2,
                                  callbacks=[Checkpoint(folder, keep_last=5), TakenOver()]))
    with pytest.raises(ValueError, match="no longer this run's") as info:
        est.fit(digits)
    assert str(folder) in str(info.value) and "b" * 32 in str(info.value)
    assert not hasattr(est, "n_iter_")
    # nothing written after the lock changed hands; the other run's lock stays
    assert _names(folder) == [LOCK_NAME, "epoch-0001.pt"]
    assert json.loads((folder / LOCK_NAME).read_text())["run_id"] == "b" * 32


def test_a_removed_lock_is_put_back_before_the_next_write(tmp_path, digits):
    folder = tmp_path / "ckpt"

    class RemoveLock(Callback):
        def on_epoch_begin(self, trainer, epoch):
            if epoch == 1:
                (folder / LOCK_NAME).unlink()

    with pytest.warns(RuntimeWarning, match="it was put back"):
        est = CueCoEmbedder(**_params(max_epochs=2, callbacks=[
            Checkpoint(folder, keep_last=5), RemoveLock()])).fit(digits)
    assert est.n_iter_ == 2
    assert _names(folder) == ["epoch-0001.pt", "epoch-0002.pt"]
    assert not np.isnan(est.transform(digits)).any()

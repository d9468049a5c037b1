"""DistributedDataParallel under torchrun: 2 CPU processes with gloo.

What differs between 2 processes with batch B and 1 process with batch 2B,
by design: query BatchNorm statistics come from B images per process (not
2B), the key network uses shuffle-BN across processes, each process draws
its own augmentations, and the DistributedSampler orders the data
differently. Identical by design: the number of optimiser steps, the
learning rate (global batch 2B), the queue contents per step (2 x 2B keys)
and the centroid updates (over all 2B keys). So the loss trajectories agree
statistically, within the tolerance tested below, not bitwise.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skcueco import CueCoEmbedder

WORKER = str(Path(__file__).with_name("ddp_worker.py"))


def torchrun(out, batch_size, *extra, nproc=2, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", WORKER, str(out), str(batch_size), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    result = torchrun(out, 16)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, [np.load(out / f"rank{r}.npz") for r in (0, 1)]


def test_both_ranks_end_with_the_same_model(two_ranks):
    _, (r0, r1) = two_ranks
    for key in ("weights", "centers", "queue", "queue_ptr", "loss", "embedding"):
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)
    assert np.isfinite(r0["loss"]).all()


def test_graph_targets_keep_both_ranks_on_the_same_model(tmp_path):
    # each rank reads the graph; rank 0's partition is broadcast to both
    result = torchrun(tmp_path, 16, "--graph-targets")
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    for key in ("weights", "centers", "queue", "loss", "embedding"):
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)
    assert np.isfinite(r0["loss"]).all()


def test_same_cluster_negatives_dropped_keep_both_ranks_on_the_same_model(tmp_path):
    # each rank queues the keys of both ranks with the clusters their steps assigned them
    result = torchrun(tmp_path, 16, "--drop-negatives")
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    for key in ("weights", "centers", "queue", "queue_labels", "loss", "embedding"):
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)
    # the last epoch (6 steps of 64 keys) rewrote the whole queue of 100, with labels
    assert r0["queue_labels"].min() >= 0 and r0["queue_labels"].max() < 3
    assert np.isfinite(r0["loss"]).all()


def test_the_read_out_with_views_gives_both_ranks_the_same_clusters(tmp_path):
    # 16x16 images: each rank draws the read-out's views; rank 0's clusters win
    result = torchrun(tmp_path, 16, "--images")
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    for key in ("weights", "centers", "prototype_labels", "embedding"):
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)
    assert len(set(r0["prototype_labels"].tolist())) > 1
    loaded = CueCoEmbedder.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded.cluster_prototype_labels_, r0["prototype_labels"])
    # each rank drew the views of all 192 images once, at the end of fit
    for r in (r0, r1):
        assert r["view_calls"].tolist() == [192]


def test_queue_holds_the_keys_of_both_ranks(two_ranks):
    _, (r0, _) = two_ranks
    # 192 samples over 2 ranks, 16 per rank and step: 6 steps an epoch, 4 epochs
    assert int(r0["global_step"]) == 24
    # each step enqueues k1 and k2 of every rank: 2 * 16 * 2 keys, FIFO mod 100
    assert int(r0["queue_ptr"]) == (24 * 2 * 16 * 2) % 100
    assert int(r0["queue_ptr"]) != (24 * 2 * 16) % 100  # what local keys would give


def test_only_rank_zero_saves_and_the_file_loads(two_ranks):
    out, (r0, _) = two_ranks
    loaded = CueCoEmbedder.load(out / "model.pt")
    sys.path.insert(0, str(Path(WORKER).parent))
    try:
        from ddp_worker import data
    finally:
        sys.path.pop(0)
    np.testing.assert_allclose(loaded.transform(data()[:10]), r0["embedding"], rtol=0, atol=0)


def test_two_ranks_follow_the_single_process_trajectory(two_ranks, tmp_path):
    _, (r0, _) = two_ranks
    single = torchrun(tmp_path, 32, nproc=1)
    assert single.returncode == 0, single.stderr[-3000:]
    s0 = np.load(tmp_path / "rank0.npz")
    assert int(s0["global_step"]) == int(r0["global_step"])  # same number of steps
    relative = np.abs(r0["loss"] - s0["loss"]) / s0["loss"]
    assert relative.max() < 0.15, (r0["loss"], s0["loss"])


def test_a_failing_rank_stops_the_job(tmp_path):
    start = time.monotonic()
    result = torchrun(tmp_path, 16, "--fail-rank", "1", timeout=180)
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stderr
    assert time.monotonic() - start < 120


def test_train_cli_under_torchrun_saves_once_and_resumes(tmp_path):
    X = np.random.default_rng(0).normal(size=(128, 12)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    out, ckpt = tmp_path / "model.pt", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "skcueco.train", "--data", str(tmp_path / "X.npy"), "--epochs", "2",
           "--batch-size", "16", "--device", "cpu", "--checkpoint-dir", str(ckpt),
           "--out", str(out), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model written to") == 1  # rank 0 reports and saves
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]
    first = CueCoEmbedder.load(out)
    assert first.n_iter_ == 2 and first.transform(X).shape == (
        128, first.encoder_.out_dim + first.projection_dim)

    # --resume continues from the newest checkpoint up to the new --epochs
    cmd[cmd.index("--epochs") + 1] = "3"
    result = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = CueCoEmbedder.load(out)
    assert resumed.n_iter_ == 3
    np.testing.assert_array_equal(resumed.history_["loss"].iloc[:2], first.history_["loss"])

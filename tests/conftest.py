"""Shared fixtures: a fast CueCoEmbedder configuration and small data sets."""

import numpy as np
import pytest
import torch

# Small enough that one fit takes a fraction of a second on one CPU core,
# large enough for one full batch per epoch (drop_last) and a 3-way k-means.
# The device is pinned to the CPU so that the bitwise-reproducibility and
# layout-equality checks hold on a machine with a GPU too.
FAST_PARAMS = dict(
    max_epochs=1,
    batch_size=32,
    hidden_dim=32,
    projection_dim=16,
    queue_size=64,
    n_clusters=3,
    cluster_warmup=0,
    device="cpu",
    random_state=0,
)

N_SAMPLES = 48


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests train tiny networks: one intra-op thread is faster than two, and
    far faster when other processes share the cores (OpenMP barrier waits)."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


@pytest.fixture(scope="session")
def fast_params():
    """``fast_params(**overrides)`` -> a fresh dict of fast estimator parameters."""

    def make(**overrides):
        return {**FAST_PARAMS, **overrides}

    return make


@pytest.fixture(scope="session")
def make_images():
    """``make_images(shape=(8, 8, 3), n=N_SAMPLES, dtype=np.uint8, seed=0)``.

    Random images of ``(n, *shape)``; uint8 in [0, 255], floats in [0, 1].
    A new array on every call, so tests may do what they like with it.
    """

    def make(shape=(8, 8, 3), n=N_SAMPLES, dtype=np.uint8, seed=0):
        rng = np.random.RandomState(seed)
        X = rng.randint(0, 256, size=(n, *shape)).astype(np.uint8)
        if np.dtype(dtype).kind == "f":
            return (X / 255.0).astype(dtype)
        return X.astype(dtype)

    return make


@pytest.fixture(scope="session")
def make_vectors():
    """``make_vectors(n=N_SAMPLES, d=5, seed=0)``: Gaussian feature vectors."""

    def make(n=N_SAMPLES, d=5, seed=0):
        return np.random.RandomState(seed).normal(size=(n, d))

    return make


@pytest.fixture
def rgb_u8(make_images):
    """(48, 8, 8, 3) uint8 images."""
    return make_images((8, 8, 3))


@pytest.fixture
def gray_u8(make_images):
    """(48, 8, 8) uint8 images."""
    return make_images((8, 8))


@pytest.fixture
def vectors(make_vectors):
    """(48, 5) float64 vectors."""
    return make_vectors()

# model files and the script that wrote them, not tests
collect_ignore_glob = ["*/fixtures/*"]



@pytest.fixture(scope="session")
def stop_after():
    """``stop_after(n)`` -> a callback ending ``fit`` after ``n`` epochs (to resume from)."""
    from skcueco.callbacks import Callback

    class StopAfter(Callback):
        def __init__(self, n):
            self.n = n

        def on_epoch_end(self, trainer, epoch, logs):
            if epoch + 1 == self.n:
                trainer.stop_training = True

    return StopAfter

"""TensorBoard: the curves, cluster sizes and projector files it writes, read back."""

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder
from skcueco._tensorboard import _thumbnails, write_projector
from skcueco.callbacks import Callback, KNNMonitor, TensorBoard

PARAMS = dict(
    max_epochs=3, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=5, cluster_warmup=1, random_state=0, device="cpu",
)
N_STEPS = 300 // 64  # steps per epoch: the last partial batch is dropped


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300], y[:300]


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def scalars(events, tag):
    """``(steps, values)`` of a scalar tag."""
    points = events.Scalars(tag)
    return [p.step for p in points], np.array([p.value for p in points])


def fit_with_board(X, y, log_dir, **board_params):
    board = TensorBoard(log_dir, **board_params)
    # the monitor comes after the board: its entry is added to the record later
    monitor = KNNMonitor(X[:200], y[:200], X[200:], y[200:])
    est = CueCoEmbedder(**PARAMS, callbacks=[board, monitor]).fit(X)
    return est, board


@pytest.fixture(scope="module")
def per_epoch_run(digits, tmp_path_factory):
    pytest.importorskip("tensorboard")
    X, y = digits
    log_dir = tmp_path_factory.mktemp("per_epoch")
    est, board = fit_with_board(X, y, log_dir, embedding_data=X, embedding_labels=y,
                                max_embedding_images=250)
    return est, board, log_dir


@pytest.fixture(scope="module")
def per_step_run(digits, tmp_path_factory):
    pytest.importorskip("tensorboard")
    X, y = digits
    log_dir = tmp_path_factory.mktemp("per_step")
    est, board = fit_with_board(X, y, log_dir, update_freq="step")
    return est, board, log_dir


# -- per epoch ------------------------------------------------------------------------


def test_per_epoch_scalars_equal_the_history(per_epoch_run):
    est, _, log_dir = per_epoch_run
    events = read_events(log_dir)
    history = est.history_
    for column in ("loss", "contrastive", "clustering", "lr", "cluster_weight",
                   "knn_accuracy"):
        steps, values = scalars(events, f"train/{column}")
        assert steps == [1, 2, 3], column  # one value per epoch, against the epoch
        np.testing.assert_allclose(values, history[column], rtol=1e-6, err_msg=column)
    # the clustering term is off in the warm-up epoch, on afterwards
    assert scalars(events, "train/cluster_weight")[1].tolist() == [0.0, 1.0, 1.0]
    assert "train/epoch" not in events.Tags()["scalars"]
    assert "train/seconds" not in events.Tags()["scalars"]


def test_per_epoch_images_per_second(per_epoch_run):
    est, _, log_dir = per_epoch_run
    steps, rates = scalars(read_events(log_dir), "train/images_per_second")
    assert steps == [1, 2, 3]
    expected = N_STEPS * PARAMS["batch_size"] / est.history_["seconds"].to_numpy()
    np.testing.assert_allclose(rates, expected, rtol=1e-5)


def test_cluster_sizes_once_the_centroids_exist(per_epoch_run):
    est, _, log_dir = per_epoch_run
    events = read_events(log_dir)
    histograms = events.Histograms("clusters/assignments")
    assert [h.step for h in histograms] == [2, 3]  # none in the warm-up epoch
    for h in histograms:
        value = h.histogram_value
        # one bucket per cluster; the keys in the queue are all assigned
        assert len(value.bucket) == PARAMS["n_clusters"]
        assert sum(value.bucket) == value.num == PARAMS["queue_size"]
        assert value.min == 0 and value.max == PARAMS["n_clusters"] - 1
    steps, largest = scalars(events, "clusters/largest_fraction")
    assert steps == [2, 3]
    last = histograms[-1].histogram_value
    assert largest[-1] == pytest.approx(max(last.bucket) / last.num)
    steps, empty = scalars(events, "clusters/empty")
    assert empty[-1] == sum(1 for count in last.bucket if count == 0)


def test_projector_files(per_epoch_run, digits):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    _, board, log_dir = per_epoch_run
    assert board.log_dir_ == log_dir
    config = text_format.Parse((log_dir / "projector_config.pbtxt").read_text(),
                               ProjectorConfig())
    assert len(config.embeddings) == 1
    info = config.embeddings[0]
    tensors = np.loadtxt(log_dir / info.tensor_path, delimiter="\t")
    assert tensors.shape[0] == 250  # max_embedding_images of the 300
    assert np.isfinite(tensors).all()
    np.testing.assert_allclose(tensors.mean(axis=0), 0, atol=1e-4)  # standardised
    labels = (log_dir / info.metadata_path).read_text().splitlines()
    assert len(labels) == 250 and set(labels) <= {str(k) for k in range(10)}
    # digits' 8 x 8 images on a 16 x 16 grid
    assert list(info.sprite.single_image_dim) == [8, 8]
    sprite = Image.open(log_dir / info.sprite.image_path)
    assert sprite.size == (16 * 8, 16 * 8) and sprite.mode == "RGB"
    # the subset is the same every time: the first thumbnail is one of the images
    X, y = digits
    first = np.asarray(sprite)[:8, :8, 0]
    rows = [i for i in range(len(X)) if np.array_equal(np.round(X[i].reshape(8, 8) / 16 * 255),
                                                        first)]
    assert rows and labels[0] == str(y[rows[0]])
    assert not list(log_dir.rglob("*.tmp"))  # every file written through a rename


def test_warm_start_continues_the_curves_in_the_same_folder(digits, tmp_path):
    pytest.importorskip("tensorboard")
    X, _ = digits
    board = TensorBoard(tmp_path, embedding_data=X[:50])
    est = CueCoEmbedder(**{**PARAMS, "max_epochs": 2}, callbacks=[board], warm_start=True)
    est.fit(X).fit(X)
    events = read_events(tmp_path)
    steps, values = scalars(events, "train/loss")
    assert steps == [1, 2, 3, 4]
    np.testing.assert_allclose(values, est.history_["loss"], rtol=1e-6)
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(),
                               ProjectorConfig())
    # one embedding per fit, without labels
    assert [e.tensor_name for e in config.embeddings] == ["embedding:00002", "embedding:00004"]
    assert not config.embeddings[0].metadata_path


# -- per step -------------------------------------------------------------------------


def test_per_step_scalars(per_step_run):
    est, _, log_dir = per_step_run
    events = read_events(log_dir)
    n_total = N_STEPS * PARAMS["max_epochs"]
    for column in ("loss", "contrastive", "clustering", "lr", "images_per_second"):
        steps, values = scalars(events, f"train/{column}")
        assert steps == list(range(1, n_total + 1)), column  # one value per step
        assert np.isfinite(values).all()
    # the epoch's history value is the mean over its steps
    _, losses = scalars(events, "train/loss")
    np.testing.assert_allclose(losses.reshape(-1, N_STEPS).mean(axis=1),
                               est.history_["loss"], rtol=1e-5)
    _, rates = scalars(events, "train/lr")
    assert rates[-1] == pytest.approx(est.history_["lr"].iloc[-1])
    assert (scalars(events, "train/images_per_second")[1] > 0).all()
    # per-epoch values at the epoch's last step
    for column in ("cluster_weight", "knn_accuracy"):
        steps, values = scalars(events, f"train/{column}")
        assert steps == [N_STEPS, 2 * N_STEPS, 3 * N_STEPS], column
        np.testing.assert_allclose(values, est.history_[column], rtol=1e-6)
    assert [h.step for h in events.Histograms("clusters/assignments")] == [2 * N_STEPS,
                                                                         3 * N_STEPS]
    assert not (log_dir / "projector_config.pbtxt").exists()  # no embedding_data


def test_logging_leaves_training_unchanged(per_step_run, digits):
    est, _, _ = per_step_run
    X, y = digits
    plain = CueCoEmbedder(**PARAMS, callbacks=[KNNMonitor(X[:200], y[:200], X[200:], y[200:])])
    plain.fit(X)
    columns = ["loss", "contrastive", "clustering", "lr", "knn_accuracy"]
    np.testing.assert_array_equal(plain.history_[columns], est.history_[columns])


def test_per_step_reads_the_device_once_per_epoch(monkeypatch, tmp_path):
    pytest.importorskip("tensorboard")
    reads = []
    original = torch.Tensor.tolist

    def counted(self):
        reads.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    trainer = fake_trainer()
    board = TensorBoard(tmp_path, update_freq="step")
    board.on_train_begin(trainer)
    for epoch in range(2):
        board.on_epoch_begin(trainer, epoch)
        for _ in range(5):
            trainer.global_step += 1
            board.on_batch_end(trainer, trainer.global_step,
                               {"loss": torch.tensor(2.0), "contrastive": torch.tensor(1.5)})
        assert reads == [(5, 2)] * epoch  # nothing read during the epoch
        board.on_epoch_end(trainer, epoch, {"epoch": epoch + 1, "loss": 2.0,
                                            "contrastive": 1.5, "lr": 0.1})
        assert reads == [(5, 2)] * (epoch + 1)  # the epoch's 5 steps in one read
    board.on_train_end(trainer)
    steps, values = scalars(read_events(tmp_path), "train/contrastive")
    assert steps == list(range(1, 11)) and (values == 1.5).all()


# -- processes, errors, input -----------------------------------------------------------


def fake_trainer(**attrs):
    defaults = dict(
        is_main_process=True, max_epochs=2, epoch=0, global_step=0, batch_size=None,
        optimizer=None, task=None, embed=None, run_info=None, failed=False,
        interrupted=False)
    return types.SimpleNamespace(**{**defaults, **attrs})


def test_only_the_main_process_writes(tmp_path):
    pytest.importorskip("tensorboard")
    trainer = fake_trainer(is_main_process=False)
    board = TensorBoard(tmp_path / "logs", update_freq="step")
    board.on_train_begin(trainer)
    board.on_epoch_begin(trainer, 0)
    board.on_batch_end(trainer, 1, {"loss": torch.tensor(1.0)})
    board.on_epoch_end(trainer, 0, {"epoch": 1, "loss": 1.0})
    board.on_train_end(trainer)
    assert not (tmp_path / "logs").exists()


class Fails(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 1:
            raise RuntimeError("boom")


def test_the_writer_is_closed_on_error_and_no_projector_is_written(digits, tmp_path):
    pytest.importorskip("tensorboard")
    X, _ = digits
    board = TensorBoard(tmp_path, embedding_data=X)
    with pytest.raises(RuntimeError, match="boom"):
        CueCoEmbedder(**PARAMS, callbacks=[board, Fails()]).fit(X)
    assert board._writer is None  # closed
    steps, _ = scalars(read_events(tmp_path), "train/loss")
    assert steps == [1, 2]  # everything written before the error is on disk
    assert not (tmp_path / "projector_config.pbtxt").exists()


def test_missing_tensorboard_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    board = TensorBoard(tmp_path)
    with pytest.raises(ImportError, match=r'pip install "skcueco\[tensorboard\]"'):
        board.on_train_begin(fake_trainer())
    # every process raises, not only the one that writes
    with pytest.raises(ImportError, match="tensorboard"):
        board.on_train_begin(fake_trainer(is_main_process=False))


@pytest.mark.parametrize("kwargs, message", [
    ({"update_freq": "batch"}, "update_freq"),
    ({"max_embedding_images": 0}, "max_embedding_images"),
    ({"max_embedding_images": 2.5}, "max_embedding_images"),
    ({"embedding_labels": [1, 2]}, "without embedding_data"),
    ({"embedding_data": np.zeros((3, 8, 8)), "embedding_labels": [1, 2]}, "2 labels for 3"),
])
def test_bad_parameters(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        TensorBoard(tmp_path, **kwargs)


def test_embedding_data_needs_a_trainer_that_embeds(tmp_path):
    pytest.importorskip("tensorboard")
    board = TensorBoard(tmp_path, embedding_data=np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="embed"):
        board.on_train_begin(fake_trainer())


def test_thumbnails_grey_and_rgb_in_every_layout():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)  # N, H, W, C
    expected = rgb.transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(_thumbnails(rgb, None), expected, atol=1e-6)
    np.testing.assert_allclose(_thumbnails(rgb.transpose(0, 3, 1, 2), None), expected,
                               atol=1e-6)  # N, C, H, W
    # flattened rows: the layout of the training images, channels last
    info = {"input": {"kind": "image", "shape": [3, 6, 7]}}
    np.testing.assert_allclose(_thumbnails(rgb.reshape(5, -1), info), expected, atol=1e-6)
    # grey floats: scaled by their minimum and maximum
    grey = rng.normal(size=(4, 9, 9)) * 5 + 3
    thumbs = _thumbnails(grey, None)
    assert thumbs.shape == (4, 1, 9, 9)
    assert thumbs.min() == 0.0 and thumbs.max() == pytest.approx(1.0)
    np.testing.assert_allclose(thumbs[:, 0], (grey - grey.min()) / np.ptp(grey), atol=1e-6)
    # vectors have no thumbnails
    assert _thumbnails(grey.reshape(4, -1), {"input": {"kind": "vector", "shape": [81]}}) is None
    assert _thumbnails(grey.reshape(4, -1), None) is None


def test_large_images_are_shrunk():
    images = np.ones((10, 3, 200, 100), dtype=np.float32)
    images[:, 0] = 0.0  # no red
    thumbs = _thumbnails(images, None)
    assert thumbs.shape == (10, 3, 64, 32)  # at most 64 pixels, aspect kept
    assert (thumbs[:, 0] == 0).all() and (thumbs[:, 1:] == 1).all()


def test_sprite_keeps_the_colours(tmp_path):
    pytest.importorskip("tensorboard")
    thumbs = np.zeros((3, 3, 4, 5), dtype=np.float32)
    thumbs[0, 0] = 1.0  # red
    thumbs[1, 1] = 1.0  # green
    thumbs[2, 2] = 1.0  # blue
    write_projector(tmp_path, "00001/embedding", "e", np.eye(3), ["a", "b c", "d"], thumbs)
    sprite = np.asarray(Image.open(tmp_path / "00001/embedding/sprite.png"))
    assert sprite.shape == (2 * 4, 2 * 5, 3)  # a 2 x 2 grid, one cell empty
    assert (sprite[:4, :5] == [255, 0, 0]).all()
    assert (sprite[:4, 5:] == [0, 255, 0]).all()
    assert (sprite[4:, :5] == [0, 0, 255]).all()
    assert (sprite[4:, 5:] == 0).all()
    assert (tmp_path / "00001/embedding/metadata.tsv").read_text() == "a\nb c\nd\n"
    np.testing.assert_array_equal(
        np.loadtxt(tmp_path / "00001/embedding/tensors.tsv", delimiter="\t"), np.eye(3))

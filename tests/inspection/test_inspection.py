"""The inspection displays: which images they pick, what they draw, their errors."""

import runpy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image
from torch.utils.data import Dataset

from skcueco import CueCoClassifier, CueCoEmbedder, ImageSource
from skcueco.callbacks import KNNMonitor
from skcueco.inspection import (
    ClusterGalleryDisplay,
    EmbeddingMapDisplay,
    NearestNeighborsDisplay,
    TrainingHistoryDisplay,
)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
OUR_EXAMPLES = ["plot_what_clusters_mean.py", "plot_image_retrieval.py"]

pytestmark = [
    # one-epoch fits of random images are not meant to learn anything
    pytest.mark.filterwarnings("ignore:Training looks collapsed"),
    # the examples end with plt.show(), a no-op under Agg
    pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive"),
]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def gray_fit(make_images, fast_params):
    """A gray (48, 8, 8) uint8 set and an embedder fitted on it."""
    X = make_images((8, 8))
    return X, CueCoEmbedder(**fast_params()).fit(X)


@pytest.fixture(scope="module")
def rgb_fit(make_images, fast_params):
    """An RGB (48, 8, 8, 3) uint8 set and an embedder fitted on it."""
    X = make_images((8, 8, 3), seed=1)
    return X, CueCoEmbedder(**fast_params()).fit(X)


@pytest.fixture(scope="module")
def vector_fit(make_vectors, fast_params):
    X = make_vectors()
    return X, CueCoEmbedder(**fast_params()).fit(X)


@pytest.fixture(params=["gray", "rgb"])
def fitted(request, gray_fit, rgb_fit):
    return gray_fit if request.param == "gray" else rgb_fit


def expected_gallery(embedder, X, n_images):
    """Indices and sizes computed independently from the projections."""
    S = embedder._trained.project(*embedder._rows(X)).astype(np.float64) @ embedder.cluster_centers_.T.astype(np.float64)
    assigned = embedder.predict(X)
    indices = np.full((len(embedder.cluster_centers_), n_images), -1)
    for k in range(len(indices)):
        members = np.flatnonzero(assigned == k)
        ranked = members[np.argsort(-S[members, k], kind="stable")][:n_images]
        indices[k, :len(ranked)] = ranked
    return indices, S


def drawn(im):
    """The data of an AxesImage as a plain float array."""
    return np.asarray(im.get_array(), dtype=np.float64)


# -- ClusterGalleryDisplay ------------------------------------------------------------
@pytest.mark.parametrize("n_images", [4, 30])
def test_gallery_picks_the_images_nearest_each_centroid(fitted, n_images):
    X, embedder = fitted
    display = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=n_images)
    expected, S = expected_gallery(embedder, X, n_images)
    sizes = np.bincount(embedder.predict(X), minlength=embedder.n_clusters)
    assert (sizes > 0).sum() >= 2  # several non-empty rows to rank within

    np.testing.assert_array_equal(display.indices, expected)
    np.testing.assert_array_equal(display.cluster_sizes, sizes)
    np.testing.assert_array_equal(display.clusters, np.arange(embedder.n_clusters))
    # a row is full exactly when its cluster has enough images
    np.testing.assert_array_equal((display.indices >= 0).sum(axis=1),
                                  np.minimum(sizes, n_images))
    shown = display.indices >= 0
    rows = np.nonzero(shown)[0]
    np.testing.assert_allclose(display.similarities[shown],
                               S[display.indices[shown], rows], atol=1e-5)
    assert np.isnan(display.similarities[~shown]).all()
    if n_images == 30:  # 48 images in 3 clusters: some cells stay empty
        assert (~shown).any()


def test_gallery_cells_draw_the_source_images(fitted):
    X, embedder = fitted
    display = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=30)
    assert display.axes_.shape == display.ims_.shape == display.indices.shape
    assert display.figure_ is display.axes_[0, 0].figure
    for (i, j), index in np.ndenumerate(display.indices):
        if index < 0:
            assert display.ims_[i, j] is None
            assert not display.axes_[i, j].images
            continue
        assert display.axes_[i, j].images[0] is display.ims_[i, j]
        np.testing.assert_allclose(drawn(display.ims_[i, j]), X[index] / 255.0)
    for i, k in enumerate(display.clusters):
        label = display.axes_[i, 0].get_ylabel()
        assert f"cluster {k}" in label and f"{display.cluster_sizes[i]} image" in label


def test_gallery_reads_every_layout_the_embedder_accepts(rgb_fit):
    X, embedder = rgb_fit
    reference = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=5)
    layouts = {
        "flattened": X.reshape(len(X), -1),
        "channels first": np.ascontiguousarray(X.transpose(0, 3, 1, 2)),
        "dataframe": pd.DataFrame(X.reshape(len(X), -1)),
    }
    for name, X_layout in layouts.items():
        display = ClusterGalleryDisplay.from_estimator(embedder, X_layout, n_images=5)
        np.testing.assert_array_equal(display.indices, reference.indices, err_msg=name)
        np.testing.assert_array_equal(display.images, reference.images, err_msg=name)


def test_gallery_scales_float_images_like_the_embedder(gray_fit, fast_params):
    X, _ = gray_fit
    X16 = X / 255.0 * 16  # digits' range, 0 to 16
    embedder = CueCoEmbedder(**fast_params()).fit(X16)
    display = ClusterGalleryDisplay.from_estimator(embedder, X16, n_images=3)
    i, j = np.argwhere(display.indices >= 0)[0]
    np.testing.assert_allclose(drawn(display.ims_[i, j]),
                               X16[display.indices[i, j]] / X16.max())


def test_gallery_shows_chosen_clusters_in_order(gray_fit):
    X, embedder = gray_fit
    full = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=3)
    display = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=3, clusters=[2, 0])
    np.testing.assert_array_equal(display.clusters, [2, 0])
    np.testing.assert_array_equal(display.indices, full.indices[[2, 0]])
    np.testing.assert_array_equal(display.cluster_sizes, full.cluster_sizes[[2, 0]])
    with pytest.raises(ValueError, match=r"clusters must be in \[0, 3\)"):
        ClusterGalleryDisplay.from_estimator(embedder, X, clusters=[3])
    with pytest.raises(ValueError, match="clusters must be a non-empty"):
        ClusterGalleryDisplay.from_estimator(embedder, X, clusters=[])
    with pytest.raises(ValueError, match="n_images must be >= 1"):
        ClusterGalleryDisplay.from_estimator(embedder, X, n_images=0)
    with pytest.raises(TypeError, match="n_images must be an int"):
        ClusterGalleryDisplay.from_estimator(embedder, X, n_images=2.5)


def write_pngs(folder, X):
    paths = []
    for i, image in enumerate(X):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def test_gallery_from_png_files(fitted, tmp_path):
    X, embedder = fitted
    paths = write_pngs(tmp_path, X)
    reference = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=5)
    for images in (ImageSource(paths), [str(p) for p in paths], tmp_path):
        display = ClusterGalleryDisplay.from_estimator(embedder, images, n_images=5)
        np.testing.assert_array_equal(display.indices, reference.indices)
        i, j = np.argwhere(display.indices >= 0)[-1]
        np.testing.assert_allclose(drawn(display.ims_[i, j]), X[display.indices[i, j]] / 255.0)


class CountingDataset(Dataset):
    """uint8 images that count how often each is read."""

    def __init__(self, X):
        self.X = X
        self.reads = np.zeros(len(X), dtype=int)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        self.reads[i] += 1
        return self.X[i]


def test_gallery_decodes_only_the_images_it_shows(gray_fit):
    X, embedder = gray_fit
    dataset = CountingDataset(X)
    source = ImageSource(dataset)
    dataset.reads[:] = 0
    display = ClusterGalleryDisplay.from_estimator(embedder, source, n_images=2)
    shown = display.indices[display.indices >= 0]
    # one read per image to project it, one more for each image shown
    expected = np.ones(len(X), dtype=int)
    expected[shown] += 1
    np.testing.assert_array_equal(dataset.reads, expected)


# -- NearestNeighborsDisplay -------------------------------------------------------------
def brute_force_top_k(Q, R, k):
    Q, R = Q.astype(np.float64), R.astype(np.float64)
    S = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (R / np.linalg.norm(R, axis=1,
                                                                           keepdims=True)).T
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, axis=1)


def test_retrieval_finds_the_query_itself_first(fitted):
    X, embedder = fitted
    queries = [5, 17, 40]
    display = NearestNeighborsDisplay.from_estimator(embedder, X[queries], X, n_neighbors=4)
    np.testing.assert_array_equal(display.indices[:, 0], queries)
    np.testing.assert_allclose(display.similarities[:, 0], 1.0, atol=1e-6)
    assert (np.diff(display.similarities, axis=1) <= 1e-12).all()

    indices, similarities = brute_force_top_k(embedder.transform(X[queries]),
                                              embedder.transform(X), 4)
    np.testing.assert_array_equal(display.indices, indices)
    np.testing.assert_allclose(display.similarities, similarities, atol=1e-6)


def test_retrieval_draws_queries_and_neighbours(fitted, make_images):
    X, embedder = fitted
    X_query = make_images(X.shape[1:], n=2, seed=7)  # not in the reference set
    display = NearestNeighborsDisplay.from_estimator(embedder, X_query, X, n_neighbors=3)
    assert display.axes_.shape == display.ims_.shape == (2, 4)
    for i in range(2):
        np.testing.assert_allclose(drawn(display.ims_[i, 0]), X_query[i] / 255.0)
        assert display.axes_[i, 0].get_title() == "query"
        for j in range(3):
            np.testing.assert_allclose(drawn(display.ims_[i, j + 1]),
                                       X[display.indices[i, j]] / 255.0)
            assert display.axes_[i, j + 1].get_title() == f"{display.similarities[i, j]:.2f}"
    assert (display.similarities[:, 0] < 1 - 1e-6).all()


def test_retrieval_from_embeddings_decodes_only_neighbours(gray_fit, tmp_path):
    X, _ = gray_fit
    paths = write_pngs(tmp_path, X[:6])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    reference = ImageSource(paths + [broken])
    R = np.eye(7)[:, :7]  # one direction per image; the broken one is the last
    Q = np.array([[0.0, 1.0, 0.5, 0, 0, 0, 0], [0.9, 0, 0, 0.1, 0, 0, 0]])
    display = NearestNeighborsDisplay.from_embeddings(Q, R, X[[1, 0]], reference,
                                                      n_neighbors=2)
    np.testing.assert_array_equal(display.indices, [[1, 2], [0, 3]])
    np.testing.assert_allclose(display.similarities[0], [1 / np.sqrt(1.25), 0.5 / np.sqrt(1.25)])
    np.testing.assert_allclose(drawn(display.ims_[0, 1]), X[1] / 255.0)
    # the broken file would have failed had it been decoded
    with pytest.raises(ValueError, match="broken.png"):
        NearestNeighborsDisplay.from_embeddings(np.eye(7)[[6]], R, X[[0]], reference,
                                                n_neighbors=1)


def test_retrieval_errors(gray_fit):
    X, embedder = gray_fit
    with pytest.raises(ValueError, match=r"n_neighbors=49 is larger than the number of "
                                         r"reference images \(48\)"):
        NearestNeighborsDisplay.from_estimator(embedder, X[:2], X, n_neighbors=49)
    with pytest.raises(ValueError, match="n_neighbors must be >= 1"):
        NearestNeighborsDisplay.from_estimator(embedder, X[:2], X, n_neighbors=0)
    Z = np.ones((3, 4))
    with pytest.raises(ValueError, match="query_embeddings have 4 features but "
                                         "reference_embeddings have 5"):
        NearestNeighborsDisplay.from_embeddings(Z, np.ones((3, 5)), X[:3], X[:3])
    with pytest.raises(ValueError, match="reference_images holds 4 images but "
                                         "reference_embeddings has 3 rows"):
        NearestNeighborsDisplay.from_embeddings(Z, Z, X[:3], X[:4])
    with pytest.raises(ValueError, match="query_images is a 2-D array"):
        NearestNeighborsDisplay.from_embeddings(Z, Z, X[:3].reshape(3, -1), X[:3])


# -- EmbeddingMapDisplay -----------------------------------------------------------------
def assert_colours_follow_labels(display, labels):
    colours = display.scatter_.get_facecolors()
    assert len(colours) == len(labels)
    classes = np.unique(labels)
    per_label = {}
    for label in classes:
        rows = np.unique(colours[labels == label], axis=0)
        assert len(rows) == 1, f"label {label} drawn in {len(rows)} colours"
        per_label[label] = tuple(rows[0])
        np.testing.assert_allclose(per_label[label], display.colors_[label])
    assert len(set(per_label.values())) == len(classes), "two labels share a colour"
    assert [t.get_text() for t in display.legend_.get_texts()] == [str(c) for c in classes]


def test_map_pca_of_the_embeddings_coloured_by_cluster(fitted):
    X, embedder = fitted
    display = EmbeddingMapDisplay.from_estimator(embedder, X)
    expected = PCA(n_components=2).fit_transform(embedder.transform(X))
    np.testing.assert_allclose(display.coordinates, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(display.scatter_.get_offsets(), display.coordinates, atol=1e-5)
    np.testing.assert_array_equal(display.labels, embedder.predict(X))
    assert display.legend_.get_title().get_text() == "cluster"
    assert display.ax_.get_xlabel().startswith("PCA 1")
    assert display.thumbnails_ == []
    assert_colours_follow_labels(display, display.labels)


def test_map_coloured_by_many_classes(gray_fit):
    X, embedder = gray_fit
    y = np.arange(len(X)) % 15  # more classes than tab10 has colours
    display = EmbeddingMapDisplay.from_estimator(embedder, X, y=y)
    np.testing.assert_array_equal(display.labels, y)
    assert display.legend_.get_title().get_text() == "class"
    assert_colours_follow_labels(display, y)
    with pytest.raises(ValueError, match=r"y must have shape \(48,\)"):
        EmbeddingMapDisplay.from_estimator(embedder, X, y=y[:10])


def test_map_thumbnails_show_their_points_images(fitted):
    X, embedder = fitted
    display = EmbeddingMapDisplay.from_estimator(embedder, X, thumbnails=6)
    assert len(display.thumbnails_) == 6
    indices = display.thumbnail_indices
    assert len(np.unique(indices)) == 6
    for artist, index in zip(display.thumbnails_, indices, strict=True):
        np.testing.assert_allclose(artist.xy, display.coordinates[index])
        np.testing.assert_allclose(np.asarray(artist.offsetbox.get_data(), dtype=float),
                                   X[index] / 255.0)
    # the thumbnails spread out: the first two are far apart on the map
    span = np.ptp(display.coordinates, axis=0)
    assert np.linalg.norm((display.coordinates[indices[0]] - display.coordinates[indices[1]])
                          / span) > 0.3


def test_map_tsne_is_seeded(gray_fit):
    X, embedder = gray_fit
    a = EmbeddingMapDisplay.from_estimator(embedder, X, method="tsne", random_state=0)
    b = EmbeddingMapDisplay.from_estimator(embedder, X, method="tsne", random_state=0)
    assert a.coordinates.shape == (len(X), 2)
    np.testing.assert_array_equal(a.coordinates, b.coordinates)
    assert a.ax_.get_xlabel() == "t-SNE 1"


def test_map_from_embeddings(gray_fit):
    X, _ = gray_fit
    Z = np.random.RandomState(0).normal(size=(len(X), 5))
    labels = np.array(["a", "b"] * (len(X) // 2))
    display = EmbeddingMapDisplay.from_embeddings(Z, labels=labels, images=X, thumbnails=3,
                                                  method=PCA(n_components=2))
    np.testing.assert_allclose(display.coordinates, PCA(n_components=2).fit_transform(Z))
    assert_colours_follow_labels(display, labels)
    assert len(display.thumbnails_) == 3
    unlabeled = EmbeddingMapDisplay.from_embeddings(Z)
    assert unlabeled.legend_ is None
    assert len(np.unique(unlabeled.scatter_.get_facecolors(), axis=0)) == 1
    with pytest.raises(ValueError, match="thumbnails need the images"):
        EmbeddingMapDisplay.from_embeddings(Z, thumbnails=True)
    with pytest.raises(ValueError, match="method must be 'pca', 'tsne'"):
        EmbeddingMapDisplay.from_embeddings(Z, method="umap")
    with pytest.raises(ValueError, match="returned shape"):
        EmbeddingMapDisplay.from_embeddings(Z, method=PCA(n_components=3))


def test_map_of_vectors_without_thumbnails(vector_fit):
    X, embedder = vector_fit
    display = EmbeddingMapDisplay.from_estimator(embedder, X)
    assert display.coordinates.shape == (len(X), 2)
    with pytest.raises(ValueError, match="fitted on feature vectors"):
        EmbeddingMapDisplay.from_estimator(embedder, X, thumbnails=True)


# -- TrainingHistoryDisplay -----------------------------------------------------------------
def test_history_lines_hold_the_history(fast_params, gray_fit):
    X, _ = gray_fit
    embedder = CueCoEmbedder(**fast_params(max_epochs=3, cluster_warmup=1)).fit(X)
    display = TrainingHistoryDisplay.from_estimator(embedder)
    history = embedder.history_
    assert len(display.axes_) == 3  # losses, learning rate, cluster weight
    assert "knn_accuracy" not in display.lines_
    for column in ("loss", "contrastive", "clustering", "lr", "cluster_weight"):
        line = display.lines_[column]
        np.testing.assert_array_equal(line.get_xdata(), history["epoch"])
        np.testing.assert_array_equal(line.get_ydata(), history[column])
    assert display.lines_["loss"].axes is display.lines_["clustering"].axes
    assert display.lines_["lr"].axes is not display.lines_["cluster_weight"].axes
    assert display.axes_[-1].get_xlabel() == "epoch"


def test_history_knn_panel_only_when_recorded(fast_params, gray_fit):
    X, _ = gray_fit
    y = np.arange(len(X)) % 3
    monitor = KNNMonitor(X[:24], y[:24], X[24:], y[24:], every=2, k=5)
    embedder = CueCoEmbedder(**fast_params(max_epochs=3, callbacks=[monitor])).fit(X)
    display = TrainingHistoryDisplay.from_estimator(embedder)
    assert len(display.axes_) == 4
    recorded = embedder.history_.dropna(subset=["knn_accuracy"])
    line = display.lines_["knn_accuracy"]
    assert line.axes is display.axes_[-1]
    np.testing.assert_array_equal(line.get_xdata(), recorded["epoch"])
    np.testing.assert_array_equal(line.get_ydata(), recorded["knn_accuracy"])


def test_history_from_a_dataframe():
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5],
                            "lr": [0.1, 0.05, 0.0], "knn_accuracy": [np.nan, 0.5, 0.7]})
    display = TrainingHistoryDisplay.from_history(history)
    assert sorted(display.lines_) == ["knn_accuracy", "loss", "lr"]
    assert len(display.axes_) == 3
    np.testing.assert_array_equal(display.lines_["knn_accuracy"].get_ydata(), [0.5, 0.7])
    with pytest.raises(TypeError, match="history must be a pandas DataFrame"):
        TrainingHistoryDisplay.from_history(history.to_dict())
    with pytest.raises(ValueError, match="history is empty"):
        TrainingHistoryDisplay.from_history(history.iloc[:0])
    with pytest.raises(ValueError, match="no 'epoch' column"):
        TrainingHistoryDisplay.from_history(history.drop(columns="epoch"))


def test_history_of_a_classifier(fast_params, gray_fit):
    X, _ = gray_fit
    y = np.arange(len(X)) % 2
    clf = CueCoClassifier(CueCoEmbedder(**fast_params()),
                          head=LogisticRegression(max_iter=200)).fit(X, y)
    display = TrainingHistoryDisplay.from_estimator(clf)
    np.testing.assert_array_equal(display.lines_["loss"].get_ydata(),
                                  clf.embedder_.history_["loss"])


# -- shared behaviour ---------------------------------------------------------------------
def test_unfitted_estimators_raise_not_fitted(gray_fit):
    X, _ = gray_fit
    embedder = CueCoEmbedder()
    calls = [
        lambda: ClusterGalleryDisplay.from_estimator(embedder, X),
        lambda: NearestNeighborsDisplay.from_estimator(embedder, X[:1], X),
        lambda: EmbeddingMapDisplay.from_estimator(embedder, X),
        lambda: TrainingHistoryDisplay.from_estimator(embedder),
        lambda: TrainingHistoryDisplay.from_estimator(CueCoClassifier()),
    ]
    for call in calls:
        with pytest.raises(NotFittedError):
            call()
    with pytest.raises(TypeError, match="needs a CueCoEmbedder or a CueCoClassifier, "
                                        "got PCA"):
        ClusterGalleryDisplay.from_estimator(PCA(), X)


def test_image_displays_refuse_a_vector_embedder(vector_fit):
    X, embedder = vector_fit
    with pytest.raises(ValueError, match="fitted on feature vectors"):
        ClusterGalleryDisplay.from_estimator(embedder, X)
    with pytest.raises(ValueError, match="fitted on feature vectors"):
        NearestNeighborsDisplay.from_estimator(embedder, X[:2], X)


def test_bad_images_are_named(gray_fit):
    _, embedder = gray_fit
    with pytest.raises(ValueError, match=r"X has 10 values per row, but the embedder reads "
                                         r"images of shape \(C, H, W\) = \(1, 8, 8\)"):
        ClusterGalleryDisplay.from_estimator(embedder, np.zeros((4, 10)))
    with pytest.raises(ValueError, match="Cannot tell the channel axis"):
        ClusterGalleryDisplay.from_estimator(embedder, np.zeros((4, 8, 8, 5)))


def test_grid_on_given_axes(gray_fit):
    X, embedder = gray_fit
    fig, ax = plt.subplots()
    display = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=2, ax=ax)
    assert display.bounding_ax_ is ax and display.figure_ is fig
    assert not ax.axison
    assert all(a.figure is fig for a in display.axes_.flat)
    fig, axes = plt.subplots(3, 2)
    display = ClusterGalleryDisplay.from_estimator(embedder, X, n_images=2, ax=axes)
    assert display.bounding_ax_ is None
    assert (display.axes_ == axes).all()
    with pytest.raises(ValueError, match=r"ax must be None, one Axes or 6 Axes"):
        ClusterGalleryDisplay.from_estimator(embedder, X, n_images=2, ax=axes[:, 0])


def test_plot_redraws_from_the_stored_data(gray_fit):
    X, embedder = gray_fit
    display = NearestNeighborsDisplay.from_estimator(embedder, X[:1], X, n_neighbors=2)
    first = display.figure_
    assert display.plot(cmap="viridis") is display
    assert display.figure_ is not first
    assert display.ims_[0, 1].get_cmap().name == "viridis"


def test_clear_error_without_matplotlib(gray_fit, monkeypatch):
    X, embedder = gray_fit
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="requires matplotlib"):
        ClusterGalleryDisplay.from_estimator(embedder, X)


# -- gallery examples ----------------------------------------------------------------------
@pytest.mark.parametrize("name", OUR_EXAMPLES)
def test_example_runs_quickly(name, monkeypatch, tmp_path):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)  # an example writing files would leave them here
    # CPU time, not wall time: other processes may share the cores
    start = time.process_time()
    runpy.run_path(str(EXAMPLES_DIR / name), run_name="__main__")
    elapsed = time.process_time() - start
    assert len(plt.get_fignums()) >= 4, f"{name} drew too few figures"
    assert not list(tmp_path.iterdir()), f"{name} wrote files"
    assert elapsed < 60, f"{name} used {elapsed:.0f} s of CPU time"

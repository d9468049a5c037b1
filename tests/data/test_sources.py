"""Images as file paths, folders, PIL images, torch Datasets: read by ImageSource.

Every form gives the same uint8 rows and trains exactly like the array of its
pixels; decoding is lazy; pickling and scikit-learn's splitting work; bad or
missing files are named."""

import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_array_equal
from PIL import Image
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.utils._param_validation import InvalidParameterError

from skcueco import CueCoClassifier, CueCoEmbedder, ImageSource
from skcueco.data.sources import as_image_source

N = 48  # one batch of 32 per epoch in conftest.FAST_PARAMS
LABELS = np.arange(N) % 2  # dark and bright images


@pytest.fixture(scope="module")
def pixels():
    """(48, 8, 8, 3) uint8 images, dark (label 0) and bright (label 1) in turn."""
    rng = np.random.RandomState(0)
    X = rng.randint(0, 128, size=(N, 8, 8, 3)).astype(np.uint8)
    X[1::2] += 127
    return X


@pytest.fixture(scope="module")
def png_paths(tmp_path_factory, pixels):
    folder = tmp_path_factory.mktemp("png")
    paths = [folder / f"img{i:02d}.png" for i in range(N)]
    for path, image in zip(paths, pixels):
        Image.fromarray(image).save(path)
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, pixels):
    root = tmp_path_factory.mktemp("folder")
    for i, (image, label) in enumerate(zip(pixels, LABELS)):
        (root / f"class_{label}").mkdir(exist_ok=True)
        Image.fromarray(image).save(root / f"class_{label}" / f"{i:02d}.png")
    (root / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    return root


class PixelsDataset(torch.utils.data.TensorDataset):
    """Items ``(float tensor (C, H, W) in [0, 1], label)``, with ``targets``."""

    def __init__(self, pixels, labels):
        super().__init__(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255,
                         torch.as_tensor(labels))
        self.targets = list(labels)


def _forms(pixels, png_paths, image_folder):
    """Every input form of the same 48 images (the folder sorts them by class)."""
    order = np.argsort(LABELS, kind="stable")
    return {
        "paths": (png_paths, np.arange(N)),
        "pathlib": ([Path(p) for p in png_paths], np.arange(N)),
        "array_of_paths": (np.array(png_paths, dtype=object), np.arange(N)),
        "series": (pd.Series(png_paths, name="file"), np.arange(N)),
        "pil": ([Image.fromarray(x) for x in pixels], np.arange(N)),
        "folder": (image_folder, order),
        "dataset": (PixelsDataset(pixels, LABELS), np.arange(N)),
    }


@pytest.mark.parametrize("form", ["paths", "pathlib", "array_of_paths", "series", "pil",
                                  "folder", "dataset"])
def test_every_form_reads_the_same_pixels_and_trains_like_the_array(
        form, pixels, png_paths, image_folder, fast_params):
    X, order = _forms(pixels, png_paths, image_folder)[form]
    source = as_image_source(X)
    assert source.shape == (N, 192) and source.dtype == np.uint8 and source.ndim == 2
    assert len(source) == N and source.mode == "RGB" and source.image_size == (8, 8)
    assert_array_equal(source[:], pixels[order].reshape(N, -1))

    emb = CueCoEmbedder(**fast_params()).fit(X)
    reference = CueCoEmbedder(**fast_params()).fit(pixels[order])
    assert emb.image_shape_ == (3, 8, 8) and emb.n_features_in_ == 192
    # the same pixels in the same order: bitwise the same training
    assert_array_equal(emb.transform(X), reference.transform(pixels[order]))


def test_folder_and_dataset_labels(image_folder, pixels, tmp_path):
    folder = ImageSource(image_folder)
    assert folder.classes == ["class_0", "class_1"]
    assert_array_equal(folder.targets, np.sort(LABELS))
    data = ImageSource(PixelsDataset(pixels, LABELS))
    assert_array_equal(data.targets, LABELS)
    assert_array_equal(data.take([3, 4]).targets, LABELS[[3, 4]])
    for i in range(3):  # a flat folder: images, no labels
        Image.fromarray(pixels[i]).save(tmp_path / f"{i}.jpg")
    flat = ImageSource(tmp_path)
    assert len(flat) == 3 and flat.targets is None and flat.classes is None


def test_mixed_modes_follow_the_first_image(pixels):
    rgb, gray = Image.fromarray(pixels[0]), Image.fromarray(pixels[1, :, :, 0])
    rgba = Image.fromarray(np.dstack([pixels[2], np.full((8, 8), 7, np.uint8)]))
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's palette-transparency warning
        colour = ImageSource([rgb, gray, rgba, palette])[:]
    assert colour.shape == (4, 192)
    # grayscale becomes R = G = B; alpha is dropped
    assert_array_equal(colour[1].reshape(8, 8, 3), np.repeat(pixels[1, :, :, :1], 3, axis=2))
    assert_array_equal(colour[2], pixels[2].reshape(-1))

    gray_first = ImageSource([gray, rgb])
    assert gray_first.mode == "L" and gray_first.shape == (2, 64)
    assert_array_equal(gray_first[1], np.asarray(rgb.convert("L")).reshape(-1))
    forced = ImageSource([gray, rgb], mode="RGB")
    assert forced.shape == (2, 192)
    assert_array_equal(forced[1], pixels[0].reshape(-1))


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100], [257 * 200, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert_array_equal(ImageSource([tmp_path / "deep.png"])[0], [0, 100, 200, 255])


def test_sizes_are_fitted_by_cover_and_centre_crop(pixels):
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, 4:12] = pixels[0]  # the centre 8 columns
    small = Image.fromarray(pixels[1]).resize((4, 4))
    source = ImageSource([Image.fromarray(pixels[0]), Image.fromarray(wide), small])
    assert source.image_size == (8, 8)  # the first image's size by default
    rows = source[:]
    assert_array_equal(rows[1], pixels[0].reshape(-1))  # no scaling needed, cropped
    assert rows[2].shape == (192,)  # upscaled
    assert ImageSource([Image.fromarray(wide)], image_size=(4, 6)).shape == (1, 72)
    assert ImageSource([Image.fromarray(wide)], image_size=5).image_size == (5, 5)
    for bad in [(8,), (0, 8), "8", (8.0, 8)]:
        with pytest.raises(ValueError, match="image_size"):
            ImageSource([small], image_size=bad)


def test_transform_fits_new_images_to_the_training_size_and_mode(fast_params, pixels):
    flat = [Image.new("RGB", (8, 8), (10 * i, 200, 30)) for i in range(N)]
    emb = CueCoEmbedder(**fast_params()).fit(flat)
    # uniform colours survive any resize exactly; grayscale is broadcast to RGB
    big = [Image.new("RGB", (20, 13), (10 * i, 200, 30)) for i in range(5)]
    assert_array_equal(emb.transform(big), emb.transform(flat[:5]))
    gray = [Image.new("L", (8, 8), 90)]
    assert_array_equal(emb.transform(gray), emb.transform([Image.new("RGB", (8, 8), (90,) * 3)]))
    # and an array of the fitted shape is still accepted
    arrays = np.stack([np.asarray(im) for im in flat[:5]])
    assert_array_equal(emb.transform(arrays), emb.transform(flat[:5]))


def test_image_size_parameter(fast_params, png_paths, tmp_path):
    emb = CueCoEmbedder(**fast_params(image_size=(6, 10))).fit(png_paths)
    assert emb.image_shape_ == (3, 6, 10) and emb.n_features_in_ == 180
    assert emb.transform(png_paths[:2]).shape[0] == 2
    emb.save(tmp_path / "model.pt")
    loaded = CueCoEmbedder.load(tmp_path / "model.pt")
    assert loaded.get_params()["image_size"] == (6, 10)
    assert_array_equal(loaded.transform(png_paths[:3]), emb.transform(png_paths[:3]))
    with pytest.raises(InvalidParameterError, match="image_size"):
        CueCoEmbedder(**fast_params(image_size=0)).fit(png_paths)
    with pytest.raises(ValueError, match="image_size"):
        CueCoEmbedder(**fast_params(image_size=(8, 8, 3))).fit(png_paths)


def test_corrupt_file_is_named_and_leaves_the_model_unfitted(fast_params, png_paths, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(png_paths[0]).read_bytes()[:60])
    for broken in (bad, truncated):
        paths = png_paths[:40] + [str(broken)] + png_paths[41:]
        emb = CueCoEmbedder(**fast_params())
        with pytest.raises(ValueError, match=re.escape(str(broken))) as info:
            emb.fit(paths)
        assert info.value.__cause__ is not None  # PIL's own error is chained
        assert not hasattr(emb, "encoder_")
    with pytest.raises(ValueError, match="broken.png"):  # found at construction
        ImageSource([bad] + png_paths)


def test_missing_file_is_named(fast_params, png_paths, tmp_path):
    missing = str(tmp_path / "nowhere.png")
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        ImageSource([missing] + png_paths)
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        CueCoEmbedder(**fast_params()).fit(png_paths + [missing])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageSource(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a directory"):
        ImageSource(png_paths[0])


def test_nothing_is_decoded_at_construction(png_paths, monkeypatch):
    opened = []
    real_open = Image.open

    def spy(path, *args, **kwargs):
        opened.append(str(getattr(path, "name", path)))  # a path, or the file opened
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    source = ImageSource(png_paths)
    assert opened == [png_paths[0]]  # the first header, for mode and size
    subset = source[5:, ...].take([0, 2])
    assert len(opened) == 1 and len(subset) == 2
    subset[[1]]
    assert opened[1:] == [png_paths[7]]
    ImageSource(png_paths, image_size=8, mode="RGB")  # both known: nothing opened
    assert len(opened) == 2


def test_indexing_like_a_2d_array(png_paths, pixels):
    source, rows = ImageSource(png_paths), pixels.reshape(N, -1)
    assert_array_equal(source[3], rows[3])
    assert_array_equal(source[-1], rows[-1])
    assert_array_equal(source[2:9:3], rows[2:9:3])
    assert_array_equal(source[np.array([4, 0, 4])], rows[[4, 0, 4]])
    mask = np.arange(N) % 5 == 0
    assert_array_equal(source[mask], rows[mask])
    assert source[[]].shape == (0, 192)
    view = source[np.array([1, 3]), ...]
    assert isinstance(view, ImageSource)
    assert_array_equal(view[:], rows[[1, 3]])
    assert_array_equal(np.asarray(source[:4, ...]), rows[:4])
    with pytest.raises(IndexError, match="out of bounds"):
        source[[N]]
    with pytest.raises(IndexError, match="does not match"):
        source[mask[:-1]]
    with pytest.raises(IndexError):
        source[:, 0]


def test_pickle_keeps_the_images(png_paths, pixels):
    for source in (ImageSource(png_paths, image_size=4).take([2, 5]),
                   ImageSource([Image.fromarray(x) for x in pixels[:3]]),
                   ImageSource(PixelsDataset(pixels, LABELS)).take([7])):
        clone = pickle.loads(pickle.dumps(source))
        assert clone.shape == source.shape
        assert_array_equal(clone[:], source[:])


def test_what_is_not_images_stays_on_the_array_path(pixels):
    for X in (pixels, pixels.reshape(N, -1).astype(float), pd.DataFrame(np.eye(3)),
              [[1, 2], [3, 4]], [], np.array([1.0, 2.0]), ["a", 1]):
        assert as_image_source(X) is None
    with pytest.raises(ValueError, match="0 images"):
        ImageSource([])
    with pytest.raises(TypeError, match="Cannot read images"):
        ImageSource({"a": 1})


def test_one_image_is_not_enough_to_fit(fast_params, png_paths):
    with pytest.raises(ValueError, match="minimum of 2"):
        CueCoEmbedder(**fast_params()).fit(png_paths[:1])
    emb = CueCoEmbedder(**fast_params(backbone="mlp")).fit(np.zeros((40, 5)))
    with pytest.raises(ValueError, match="X has 192 features, but CueCoEmbedder is "
                                         "expecting 5"):
        emb.transform(png_paths[:2])  # vectors in fit, images now


def test_splitting_a_source_keeps_it_lazy(png_paths):
    source = ImageSource(png_paths)
    train, test, y_train, _ = train_test_split(source, LABELS, test_size=0.25,
                                               random_state=0)
    assert isinstance(train, ImageSource) and len(train) == 36 and len(test) == 12
    assert len(y_train) == 36


def _classifier(fast_params, **params):
    return CueCoClassifier(CueCoEmbedder(**fast_params(batch_size=16, queue_size=32)),
                           head_epochs=30, head_lr=0.3, random_state=0, **params)


def test_cross_val_score_and_grid_search_on_paths(fast_params, png_paths):
    scores = cross_val_score(_classifier(fast_params), png_paths, LABELS, cv=2)
    assert scores.shape == (2,) and np.all(scores >= 0.75)  # bright vs dark images
    search = GridSearchCV(_classifier(fast_params), {"head_lr": [0.01, 0.3]}, cv=2,
                          error_score="raise").fit(pd.Series(png_paths), LABELS)
    assert search.best_score_ >= 0.75
    assert search.predict(png_paths[:4]).shape == (4,)


def test_classifier_on_a_dataset_and_new_sizes(fast_params, pixels):
    data = PixelsDataset(pixels, LABELS)
    clf = _classifier(fast_params).fit(data, data.targets)
    assert clf.n_features_in_ == 192
    bigger = [Image.fromarray(x).resize((16, 16)) for x in pixels[:6]]
    assert_array_equal(clf.predict(bigger), LABELS[:6])
    assert clf.predict_proba(data).shape == (N, 2)


def test_loader_workers_decode_the_same_images(fast_params, png_paths):
    in_process = CueCoEmbedder(**fast_params()).fit(png_paths)
    workers = CueCoEmbedder(**fast_params(num_workers=2)).fit(png_paths)
    assert_array_equal(workers.transform(png_paths), in_process.transform(png_paths))


def test_the_read_out_views_of_image_files_are_those_of_their_pixels(fast_params, pixels,
                                                                    tmp_path, monkeypatch):
    from skcueco.training import run

    # 16x16 images: fit's read-out adds views of the images read (lazily decoded)
    big = np.repeat(np.repeat(pixels, 2, axis=1), 2, axis=2)
    paths = []
    for i, image in enumerate(big):
        paths.append(str(tmp_path / f"big{i:02d}.png"))
        Image.fromarray(image).save(paths[-1])
    calls = []
    view_pass = run.view_pass
    monkeypatch.setattr(run, "view_pass", lambda *a, **k: calls.append(a[4].shape) or
                        view_pass(*a, **k))
    params = fast_params(cluster_graph=5)
    emb = CueCoEmbedder(**params).fit(paths)
    reference = CueCoEmbedder(**params).fit(big)
    assert calls == [(N, 768), (N, 768)]
    assert_array_equal(emb.cluster_prototype_labels_, reference.cluster_prototype_labels_)
    assert_array_equal(emb.predict(paths), reference.predict(big))

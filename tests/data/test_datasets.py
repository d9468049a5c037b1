"""skcueco.datasets on files written here in the real formats, and skcueco.recipes.

Nothing is downloaded: CIFAR's pickled batch files and an ImageNet-style folder
of images are generated in a temporary directory. torchvision checks the MD5
sums of the CIFAR files; the generated ones cannot match, so the tests replace
that check by a check that the file exists.
"""

import os
import pickle

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from PIL import Image

from skcueco import CueCoEmbedder, ImageSource
from skcueco.datasets import (
    IMAGENET100_CLASSES,
    load_cifar10,
    load_cifar100,
    load_imagenet100,
)
from skcueco.recipes import recipe, recipe_names


@pytest.fixture
def no_md5(monkeypatch):
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity",
                        lambda path, md5=None: os.path.isfile(path))


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(n, n_classes, seed):
    """Rows as CIFAR stores them: 1024 red, 1024 green, 1024 blue values."""
    rng = np.random.RandomState(seed)
    return (rng.randint(0, 256, (n, 3072)).astype(np.uint8),
            rng.randint(0, n_classes, n).tolist())


def _as_hwc(rows):
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = [_cifar_rows(4, 10, seed) for seed in range(6)]
    for i, (X, y) in enumerate(batches[:5], start=1):
        _dump(folder / f"data_batch_{i}", {"data": X, "labels": y, "batch_label": "x"})
    _dump(folder / "test_batch", {"data": batches[5][0], "labels": batches[5][1]})
    _dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return tmp_path, batches


def test_load_cifar10_reads_the_batches_in_order(cifar10_root, no_md5):
    root, batches = cifar10_root
    X, y = load_cifar10(root)
    assert X.shape == (20, 32, 32, 3) and X.dtype == np.uint8 and X.flags.c_contiguous
    assert y.dtype == np.int64
    assert_array_equal(X, _as_hwc(np.vstack([b[0] for b in batches[:5]])))
    assert_array_equal(y, sum((b[1] for b in batches[:5]), []))
    X_test, y_test = load_cifar10(str(root), train=False)
    assert_array_equal(X_test, _as_hwc(batches[5][0]))
    assert_array_equal(y_test, batches[5][1])


def test_load_cifar100_reads_fine_labels(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    for split, seed in (("train", 0), ("test", 1)):
        X, y = _cifar_rows(6, 100, seed)
        _dump(folder / split, {"data": X, "fine_labels": y, "coarse_labels": [0] * 6})
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    X, y = load_cifar100(tmp_path, train=False)
    rows, labels = _cifar_rows(6, 100, 1)
    assert_array_equal(X, _as_hwc(rows))
    assert_array_equal(y, labels)


def test_cifar_loaded_arrays_train_an_embedder(cifar10_root, no_md5, fast_params):
    X, _ = load_cifar10(cifar10_root[0])
    emb = CueCoEmbedder(**fast_params(batch_size=8, queue_size=8)).fit(X)
    assert emb.image_shape_ == (3, 32, 32)


def test_missing_cifar_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*download=True"):
        load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar100(tmp_path, train=False)


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """train/ and val/ with the 100 classes (2 and 1 images), plus one more class."""
    root = tmp_path_factory.mktemp("imagenet")
    for split, per_class in (("train", 2), ("val", 1)):
        for k, wnid in enumerate((*IMAGENET100_CLASSES, "n99999999")):
            (root / split / wnid).mkdir(parents=True)
            for j in range(per_class):
                pixels = np.full((10 + j, 12, 3), (k, 255 - k, 40 * j), np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{j}.JPEG")
    return root


def test_imagenet100_keeps_the_100_classes(imagenet_root):
    X, y = load_imagenet100(imagenet_root, image_size=8)
    assert isinstance(X, ImageSource) and X.shape == (200, 192) and X.mode == "RGB"
    assert X.classes == sorted(IMAGENET100_CLASSES)
    assert y.dtype == np.int64 and y.shape == (200,)
    assert_array_equal(np.bincount(y), np.full(100, 2))  # the extra class is left out
    # the labels follow the folders: image 0 and 1 are of the first sorted class
    first = IMAGENET100_CLASSES.index(X.classes[0])
    centre = X[0].reshape(8, 8, 3)[4, 4].astype(int)
    assert np.abs(centre - [first, 255 - first, 0]).max() <= 3  # JPEG rounding
    X_val, y_val = load_imagenet100(imagenet_root, "val")
    assert X_val.image_size == (224, 224) and X_val.shape == (100, 224 * 224 * 3)
    assert_array_equal(y_val, np.arange(100))


def test_imagenet100_errors(imagenet_root, tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_imagenet100(imagenet_root, "test")
    (tmp_path / "train" / IMAGENET100_CLASSES[0]).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="99 class folder"):
        load_imagenet100(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_imagenet100(tmp_path, "val")


def test_imagenet100_class_list_is_cmc():
    assert len(IMAGENET100_CLASSES) == len(set(IMAGENET100_CLASSES)) == 100
    assert IMAGENET100_CLASSES[:3] == ("n02869837", "n01749939", "n02488291")
    assert IMAGENET100_CLASSES[-1] == "n02090622"
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in IMAGENET100_CLASSES)


@pytest.mark.parametrize("name, queue, clusters, decay, size", [
    ("cifar10", 4096, 10, 5e-4, None),
    ("cifar100", 4096, 100, 5e-4, None),
    ("imagenet100", 65536, 100, 1e-4, 224),
])
def test_recipes(name, queue, clusters, decay, size):
    params = recipe(name)
    assert (params["queue_size"], params["n_clusters"], params["weight_decay"],
            params["image_size"]) == (queue, clusters, decay, size)
    assert params["backbone"] == "resnet18" and params["batch_size"] == 256
    assert params["temperature"] == 0.2 and params["key_momentum"] == 0.99
    assert params["lr"] == "auto" and params["cluster_weight"] == 1.0
    emb = CueCoEmbedder(**params)
    emb._validate_params()  # every value passes the estimator's constraints
    assert emb.get_params()["n_clusters"] == clusters


def test_recipe_is_a_fresh_dict_and_unknown_names_fail():
    recipe("cifar10")["queue_size"] = 1
    assert recipe("cifar10")["queue_size"] == 4096
    assert recipe_names() == ["cifar10", "cifar100", "imagenet100"]
    with pytest.raises(ValueError, match="cifar10, cifar100, imagenet100"):
        recipe("imagenet")

"""Tests of CueCoEmbedder: input handling, outputs, fitted state, errors.

Every fit uses the tiny configuration of ``conftest.fast_params`` (one epoch,
one batch of 32, 8x8 images), so the whole file runs in well under a minute
on two CPU cores. Estimators that several tests only read are fitted once per
module; tests that change an estimator work on a deep copy.
"""

import copy
import pickle
import random

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

import skcueco.data.loaders
from skcueco import CueCoEmbedder
from skcueco.nn.vote import vote_clusters
from skcueco.training.engine import NonFiniteLossError
from skcueco.backbones import MLP


def _fit(X, fast_params, **overrides):
    return CueCoEmbedder(**fast_params(**overrides)).fit(X)


def _tiny_cnn(in_channels=3):
    # (N, C, 8, 8) -> (N, 16)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )


@pytest.fixture(scope="module")
def fitted_rgb(make_images, fast_params):
    """An embedder fitted on (48, 8, 8, 3) uint8 images, and those images."""
    X = make_images((8, 8, 3))
    return CueCoEmbedder(**fast_params()).fit(X), X


@pytest.fixture(scope="module")
def fitted_vec(make_vectors, fast_params):
    """An embedder fitted on (48, 5) vectors, and those vectors."""
    X = make_vectors()
    return CueCoEmbedder(**fast_params()).fit(X), X


# -- input formats -----------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, layout, dtype, image_shape_",
    [
        ((8, 8), "NHW", np.uint8, (1, 8, 8)),
        ((8, 8), "NHW", np.float32, (1, 8, 8)),
        ((8, 8, 3), "NHWC", np.uint8, (3, 8, 8)),
        ((8, 8, 3), "NHWC", np.float64, (3, 8, 8)),
        ((8, 8, 1), "NHWC", np.uint8, (1, 8, 8)),
        ((3, 8, 8), "NCHW", np.uint8, (3, 8, 8)),
        ((3, 8, 8), "NCHW", np.float32, (3, 8, 8)),
        ((1, 8, 8), "NCHW", np.float64, (1, 8, 8)),
        ((6, 10, 3), "NHWC", np.uint8, (3, 6, 10)),
    ],
)
def test_image_array_formats(make_images, fast_params, shape, layout, dtype, image_shape_):
    X = make_images(shape, dtype=dtype)
    est = _fit(X, fast_params)
    assert est.image_shape_ == image_shape_
    assert est.n_features_in_ == int(np.prod(shape))
    Z = est.transform(X)
    assert Z.shape == (len(X), len(est.get_feature_names_out()))
    assert Z.dtype == np.float32
    assert np.isfinite(Z).all()


@pytest.mark.parametrize("image_shape", [(8, 8), (8, 8, 3)])
def test_flattened_with_image_shape_matches_image_array(make_images, fast_params,
                                                        image_shape):
    # a row flattened as (H, W, C) must be read back into the same image
    X = make_images(image_shape)
    est_img = _fit(X, fast_params)
    est_flat = _fit(X.reshape(len(X), -1), fast_params, image_shape=image_shape)
    c = image_shape[2] if len(image_shape) == 3 else 1
    assert est_flat.image_shape_ == (c, *image_shape[:2])
    assert_array_equal(est_flat.transform(X.reshape(len(X), -1)), est_img.transform(X))


def test_non_square_image_shape(make_images, fast_params):
    X = make_images((6, 10, 3))
    est = _fit(X.reshape(len(X), -1), fast_params, image_shape=(6, 10, 3))
    assert est.image_shape_ == (3, 6, 10)
    assert_array_equal(est.transform(X.reshape(len(X), -1)), est.transform(X))


def test_channels_first_fit_equals_channels_last_fit(rgb_u8, fast_params):
    est_last = _fit(rgb_u8, fast_params)
    est_first = _fit(np.ascontiguousarray(rgb_u8.transpose(0, 3, 1, 2)), fast_params)
    assert est_first.image_shape_ == est_last.image_shape_ == (3, 8, 8)
    assert_array_equal(est_first.transform(rgb_u8), est_last.transform(rgb_u8))


@pytest.mark.parametrize(
    "n_features, image_shape_",
    [
        (64, (1, 8, 8)),
        (100, (1, 10, 10)),
        (192, (3, 8, 8)),
        (5, None),
        (49, None),  # 7 x 7: below the smallest auto-detected side
        (147, None),  # 3 x 7 x 7
        (65, None),
    ],
)
def test_auto_image_shape_detection(make_vectors, fast_params, n_features, image_shape_):
    X = make_vectors(d=n_features)
    est = _fit(X, fast_params)
    assert est.image_shape_ == image_shape_
    if image_shape_ is None:
        assert isinstance(est.encoder_, MLP)


def test_auto_detected_rgb_reads_rows_channels_last(rgb_u8, fast_params):
    est_img = _fit(rgb_u8, fast_params)
    est_auto = _fit(rgb_u8.reshape(len(rgb_u8), -1), fast_params)
    assert est_auto.image_shape_ == (3, 8, 8)
    assert_array_equal(est_auto.transform(rgb_u8.reshape(len(rgb_u8), -1)),
                       est_img.transform(rgb_u8))


def test_image_shape_none_forces_vectors(gray_u8, fast_params):
    X = gray_u8.reshape(len(gray_u8), -1)
    est = _fit(X, fast_params, image_shape=None)
    assert est.image_shape_ is None
    assert isinstance(est.encoder_, MLP)
    assert est.transform(X).shape[0] == len(X)


def test_dataframe_records_feature_names(gray_u8, fast_params):
    columns = [f"px{i}" for i in range(64)]
    df = pd.DataFrame(gray_u8.reshape(len(gray_u8), -1), columns=columns)
    est = _fit(df, fast_params)
    assert_array_equal(est.feature_names_in_, columns)
    assert est.image_shape_ == (1, 8, 8)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        Z_array = est.transform(gray_u8)
    assert_array_equal(est.transform(df), Z_array)


def test_list_of_lists_equals_array(vectors, fast_params):
    est_list = _fit(vectors.tolist(), fast_params)
    est_array = _fit(vectors, fast_params)
    assert_array_equal(est_list.transform(vectors.tolist()), est_array.transform(vectors))


@pytest.mark.parametrize("kind", ["rgb", "vectors"])
def test_read_only_input(rgb_u8, vectors, fast_params, kind):
    X = rgb_u8 if kind == "rgb" else vectors
    expected = _fit(X, fast_params).transform(X)
    X_ro = X.copy()
    X_ro.setflags(write=False)
    est = _fit(X_ro, fast_params)
    assert_array_equal(est.transform(X_ro), expected)
    assert est.predict(X_ro).shape == (len(X),)
    # batches of read-only data are copied, not wrapped as non-writable
    # tensors (torch warns about those, once per process, so check directly)
    rows = X_ro.reshape(len(X_ro), -1)[:4]
    assert not np.shares_memory(skcueco.data.loaders.rows_tensor(rows).numpy(), X_ro)


@pytest.mark.parametrize("kind", ["vectors", "rgb_transposed", "rgb_strided"])
def test_non_contiguous_input(make_images, make_vectors, fast_params, kind):
    if kind == "vectors":
        X = make_vectors(d=10)[:, ::2]
    elif kind == "rgb_transposed":
        # channels-last view of a channels-first buffer
        X = np.ascontiguousarray(make_images((3, 8, 8))).transpose(0, 2, 3, 1)
    else:
        X = make_images((16, 8, 3))[:, ::2]
    assert not X.flags.c_contiguous
    est = _fit(X, fast_params)
    est_c = _fit(np.ascontiguousarray(X), fast_params)
    assert_array_equal(est.transform(X), est_c.transform(np.ascontiguousarray(X)))


@pytest.mark.parametrize("kind", ["rgb", "gray_float", "vectors"])
def test_input_not_modified(make_images, make_vectors, fast_params, kind):
    X = {
        "rgb": lambda: make_images((8, 8, 3)),
        "gray_float": lambda: make_images((8, 8), dtype=np.float32),
        "vectors": lambda: make_vectors(),
    }[kind]()
    X_before = X.copy()
    est = _fit(X, fast_params)
    est.transform(X)
    est.predict(X)
    assert_array_equal(X, X_before)
    assert X.dtype == X_before.dtype


@pytest.mark.parametrize("shape", [(8, 8, 3), (8, 8), (64,)])
def test_uint8_training_set_is_not_copied(make_images, fast_params, monkeypatch, shape):
    # The loader must gather batches from the caller's compact array, not
    # from a float (or any other) copy of the whole set.
    seen = []
    original_init = skcueco.data.loaders.ArrayBatches.__init__

    def recording_init(self, X):
        seen.append(X)
        original_init(self, X)

    monkeypatch.setattr(skcueco.data.loaders.ArrayBatches, "__init__", recording_init)
    X = make_images(shape)
    _fit(X, fast_params)
    assert seen, "fit built no ArrayBatches"
    train_X = seen[0]
    assert train_X.dtype == np.uint8
    assert np.shares_memory(train_X, X)


# -- layouts at transform ------------------------------------------------------------


def test_transform_accepts_other_layout_of_same_images(fitted_rgb):
    est, X = fitted_rgb
    Z = est.transform(X)
    X_chw = X.transpose(0, 3, 1, 2)
    assert_array_equal(est.transform(np.ascontiguousarray(X_chw)), Z)
    assert_array_equal(est.transform(X_chw), Z)  # a non-contiguous view too
    assert_array_equal(est.transform(X.reshape(len(X), -1)), Z)
    assert_array_equal(est.predict(X_chw), est.predict(X))


# -- output ----------------------------------------------------------------------


def _features(est, X):
    """The standardised backbone features (``embedding_space="features"``)."""
    own = est.embedding_space
    try:
        return est.set_params(embedding_space="features").transform(X)
    finally:
        est.set_params(embedding_space=own)


def test_transform_output_dtype_shape_and_names(fitted_rgb):
    est, X = fitted_rgb
    Z = est.transform(X)
    assert Z.dtype == np.float32
    names = est.get_feature_names_out()
    assert Z.shape == (len(X), len(names))
    assert list(names) == [f"cuecoembedder{i}" for i in range(Z.shape[1])]
    # the width is the backbone's (what the encoder itself returns) and the
    # projection's, side by side
    with torch.no_grad():
        out = est.encoder_(torch.zeros(2, *est.image_shape_))
    assert out.shape[1] + est.projection_dim == Z.shape[1]


def test_float64_input_gives_float32_output(fitted_vec):
    est, X = fitted_vec
    assert X.dtype == np.float64
    assert est.transform(X).dtype == np.float32


def test_set_output_pandas(fitted_rgb):
    est, X = fitted_rgb
    est = copy.deepcopy(est)
    expected = est.transform(X)
    est.set_output(transform="pandas")
    # integer column names are not feature names: no warning, same result
    df_in = pd.DataFrame(X.reshape(len(X), -1), index=np.arange(100, 100 + len(X)))
    Z = est.transform(df_in)
    assert isinstance(Z, pd.DataFrame)
    assert list(Z.columns) == list(est.get_feature_names_out())
    assert list(Z.index) == list(df_in.index)
    assert_array_equal(Z.to_numpy(), expected)


@pytest.mark.parametrize("which", ["rgb", "vec"])
def test_transform_independent_of_batching(fitted_rgb, fitted_vec, which):
    est, X = fitted_rgb if which == "rgb" else fitted_vec
    Z = est.transform(X)
    chunks = np.vstack([est.transform(X[i:i + 7]) for i in range(0, len(X), 7)])
    assert_allclose(chunks, Z, rtol=0, atol=1e-6)
    assert_allclose(est.transform(X[:1]), Z[:1], rtol=0, atol=1e-6)
    small_batches = copy.deepcopy(est).set_params(batch_size=5)
    assert_allclose(small_batches.transform(X), Z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["rgb", "vec"])
def test_transform_independent_of_sample_order(fitted_rgb, fitted_vec, which):
    est, X = fitted_rgb if which == "rgb" else fitted_vec
    perm = np.random.RandomState(1).permutation(len(X))
    assert_allclose(est.transform(X[perm]), est.transform(X)[perm], rtol=0, atol=1e-6)
    assert_array_equal(est.predict(X[perm]), est.predict(X)[perm])


# -- fitted attributes -------------------------------------------------------------


def test_fitted_attributes(fitted_rgb, fast_params):
    est, X = fitted_rgb
    params = fast_params()
    assert isinstance(est.encoder_, nn.Module)
    assert est.cluster_centers_.shape == (params["n_clusters"], params["projection_dim"])
    assert_allclose(np.linalg.norm(est.cluster_centers_, axis=1), 1.0, atol=1e-5)
    assert isinstance(est.history_, pd.DataFrame)
    assert {"epoch", "loss", "contrastive", "clustering", "lr", "seconds"} <= set(
        est.history_.columns
    )
    assert len(est.history_) == params["max_epochs"]
    assert np.isfinite(est.history_[["loss", "contrastive", "clustering"]].to_numpy()).all()
    assert est.n_iter_ == params["max_epochs"]
    assert est.n_features_in_ == 8 * 8 * 3
    assert est.image_shape_ == (3, 8, 8)
    assert est.device_ == torch.device("cpu")


def test_history_has_one_row_per_epoch(gray_u8, fast_params):
    est = _fit(gray_u8, fast_params, max_epochs=3)
    assert est.n_iter_ == 3
    assert est.history_["epoch"].tolist() == [1, 2, 3]
    assert (est.history_["seconds"] >= 0).all()


def test_device_auto_uses_cpu_without_gpu(gray_u8, fast_params):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    est = _fit(gray_u8, fast_params, device="auto")
    assert est.device_.type in ("cpu", "mps")


def test_predict(fitted_rgb, fast_params):
    est, X = fitted_rgb
    labels = est.predict(X)
    assert labels.shape == (len(X),)
    assert labels.dtype.kind == "i"
    assert labels.min() >= 0 and labels.max() < fast_params()["n_clusters"]


def test_predict_is_the_vote_of_the_nearest_prototypes(fitted_rgb):
    est, X = fitted_rgb
    projector = copy.deepcopy(est._trained.projector).eval()
    # the backbone features behind the standardised embeddings
    h = _features(est, X) * est.embedding_scale_ + est.embedding_mean_
    with torch.no_grad():
        z = projector(torch.as_tensor(h))
    z = torch.nn.functional.normalize(z, dim=1)
    voted = vote_clusters(z, torch.from_numpy(est.cluster_prototypes_),
                          torch.from_numpy(est.cluster_prototype_labels_), est.n_clusters,
                          est._trained.prototype_votes)
    assert_array_equal(est.predict(X), voted.numpy())


def test_the_default_clustering_term_is_the_prototype_form(make_images, fast_params):
    # the default reaches the model: it trains exactly as cluster_loss="proto"
    X = make_images((8, 8, 3))
    params = fast_params(max_epochs=2, cluster_ramp=0)
    default = CueCoEmbedder(**params).fit(X)
    proto = CueCoEmbedder(**params, cluster_loss="proto").fit(X)
    pull = CueCoEmbedder(**params, cluster_loss="pull").fit(X)
    assert default.cluster_loss == "proto"
    np.testing.assert_array_equal(default.transform(X), proto.transform(X))
    np.testing.assert_array_equal(default.history_["clustering"], proto.history_["clustering"])
    assert not np.array_equal(default.history_["clustering"], pull.history_["clustering"])


def test_transform_standardises_the_backbone_features(fitted_rgb):
    est, X = fitted_rgb
    encoder = copy.deepcopy(est.encoder_).eval()
    with torch.no_grad():
        h = encoder(est._trained.preprocess(torch.from_numpy(X.reshape(len(X), -1)))).numpy()
    std = h.std(axis=0)
    live = std > 1e-3 * std.mean()
    assert live.sum() > h.shape[1] // 2
    np.testing.assert_allclose(est.embedding_mean_, h.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(est.embedding_scale_[live], std[live], rtol=1e-3)
    assert (est.embedding_scale_[~live] == 1).all()  # constant features: not blown up
    Z = _features(est, X)
    np.testing.assert_allclose(Z, (h - h.mean(axis=0)) / est.embedding_scale_,
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(Z[:, live].std(axis=0), 1, rtol=1e-3)
    assert est.embedding_mean_.dtype == est.embedding_scale_.dtype == np.float32


def test_encoder_stays_in_eval_mode(rgb_u8, fast_params):
    # encoder_ is documented as "in eval mode": using it directly must not
    # update its BatchNorm statistics, whatever was called before
    est = _fit(rgb_u8, fast_params)
    modules = [*est.encoder_.modules(), *est._trained.projector.modules()]
    assert not any(m.training for m in modules)
    Z = est.transform(rgb_u8)
    assert not any(m.training for m in modules), "transform left train mode on"
    est.predict(rgb_u8)
    assert not any(m.training for m in modules), "predict left train mode on"
    with torch.no_grad():
        est.encoder_(torch.rand(4, 3, 8, 8))
    assert_array_equal(est.transform(rgb_u8), Z)


def test_fit_predict_equals_fit_then_predict(gray_u8, fast_params):
    labels = CueCoEmbedder(**fast_params()).fit_predict(gray_u8)
    assert_array_equal(labels, _fit(gray_u8, fast_params).predict(gray_u8))


# -- reproducibility ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rgb", "vectors"])
def test_same_random_state_is_bitwise_reproducible(rgb_u8, vectors, fast_params, kind):
    X = rgb_u8 if kind == "rgb" else vectors
    params = dict(max_epochs=2, random_state=7)
    Z1 = _fit(X, fast_params, **params).transform(X)
    Z2 = _fit(X, fast_params, **params).transform(X)
    assert_array_equal(Z1, Z2)
    Z3 = _fit(X, fast_params, max_epochs=2, random_state=8).transform(X)
    assert not np.array_equal(Z1, Z3)


def test_global_random_state_untouched(gray_u8, fast_params):
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    est = _fit(gray_u8, fast_params, max_epochs=2, cluster_update="epoch")
    est.transform(gray_u8)
    est.predict(gray_u8)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np_after = np.random.get_state()
    assert np_after[0] == np_state[0]
    assert_array_equal(np_after[1], np_state[1])
    assert np_after[2:] == np_state[2:]
    assert random.getstate() == py_state


# -- bad input ---------------------------------------------------------------------


def _nan_images(make_images):
    X = make_images((8, 8), dtype=np.float64)
    X[3, 2, 1] = np.nan
    return X


@pytest.mark.parametrize(
    "make_X, error, match",
    [
        (_nan_images, ValueError, "NaN"),
        (lambda mk: np.where(np.eye(48, 5) > 0, np.nan, 0.5), ValueError, "NaN"),
        (lambda mk: np.full((48, 8, 8, 3), np.inf), ValueError, "infinity"),
        (lambda mk: np.zeros((0, 5)), ValueError, "0 sample"),
        (lambda mk: np.zeros((0, 8, 8), np.uint8), ValueError, "0 sample"),
        (lambda mk: mk((8, 8), n=1), ValueError, "1 sample"),
        (lambda mk: np.zeros((1, 5)), ValueError, "1 sample"),
        (lambda mk: np.zeros(5), ValueError, "1D"),
        (lambda mk: np.zeros((4, 2, 8, 8, 3)), ValueError, "5-D"),
        (lambda mk: np.array([["a", "b"]] * 10, dtype=object), ValueError, "string"),
        (lambda mk: np.array([["a", "b"]] * 10), ValueError, "string"),
        (lambda mk: np.full((10, 8, 8), "x", dtype=object), ValueError, "string"),
        (lambda mk: np.ones((10, 5), complex), ValueError, "[Cc]omplex"),
        (lambda mk: np.ones((10, 8, 8, 3), complex), ValueError, "[Cc]omplex"),
        (lambda mk: sp.csr_matrix(np.ones((10, 5))), TypeError, "[Ss]parse"),
        (lambda mk: np.zeros((10, 8, 8, 5)), ValueError, "channel"),
    ],
    ids=[
        "nan-images", "nan-vectors", "inf", "empty-2d", "empty-3d", "one-image",
        "one-vector", "1d", "5d", "object-strings", "unicode-strings",
        "object-images", "complex-2d", "complex-4d", "sparse", "five-channels",
    ],
)
def test_bad_input_fit(make_images, fast_params, make_X, error, match):
    est = CueCoEmbedder(**fast_params())
    with pytest.raises(error, match=match):
        est.fit(make_X(make_images))


def test_nan_at_transform(fitted_rgb):
    est, X = fitted_rgb
    X = X.astype(np.float64)
    X[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.transform(X)


@pytest.mark.parametrize(
    "image_shape, match",
    [
        ((8, 7), "holds 56 values but X has 64 features"),
        ((8, 8, 3), "holds 192 values but X has 64 features"),
        ((8, -8), "positive integers"),
        ((8, 0), "positive integers"),
        ((8.0, 8), "positive integers"),
        ((64,), r"\(height, width\)"),
        ((2, 2, 2, 8), r"\(height, width\)"),
    ],
)
def test_bad_image_shape(make_vectors, fast_params, image_shape, match):
    est = CueCoEmbedder(**fast_params(image_shape=image_shape))
    with pytest.raises(ValueError, match=match):
        est.fit(make_vectors(d=64))


def test_image_shape_as_list(make_vectors, fast_params):
    est = _fit(make_vectors(d=96), fast_params, image_shape=[8, 12])
    assert est.image_shape_ == (1, 8, 12)


def test_different_number_of_features_at_transform(fitted_vec):
    est, X = fitted_vec
    with pytest.raises(ValueError, match="4 features.*expecting 5"):
        est.transform(X[:, :4])
    with pytest.raises(ValueError, match="4 features.*expecting 5"):
        est.predict(X[:, :4])


@pytest.mark.parametrize(
    "fit_shape, transform_shape, match",
    [
        ((8, 8), (4, 16), r"shape \(C, H, W\) = \(1, 4, 16\).*\(1, 8, 8\)"),
        ((8, 8, 3), (8, 24), r"\(1, 8, 24\).*\(3, 8, 8\)"),
        ((8, 8, 3), (10, 10, 3), "300 features.*expecting 192"),
    ],
)
def test_transform_images_of_other_shape(make_images, fast_params, fit_shape,
                                         transform_shape, match):
    est = _fit(make_images(fit_shape), fast_params)
    with pytest.raises(ValueError, match=match):
        est.transform(make_images(transform_shape, n=5))


def test_transform_images_after_fit_on_vectors(make_vectors, make_images, fast_params):
    est = _fit(make_vectors(d=64), fast_params, image_shape=None)
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*feature vectors"):
        est.transform(make_images((8, 8), n=5))


@pytest.mark.parametrize("method", ["transform", "predict", "get_feature_names_out"])
def test_not_fitted(gray_u8, method):
    est = CueCoEmbedder()
    args = () if method == "get_feature_names_out" else (gray_u8,)
    with pytest.raises(NotFittedError):
        getattr(est, method)(*args)


@pytest.mark.parametrize(
    "param, value",
    [
        ("backbone", "resnet9"),
        ("temperature", 0),
        ("batch_size", 1),
        ("cluster_update", "x"),
        ("cluster_loss", "kl"),
        ("max_epochs", 0),
        ("queue_size", -1),
        ("n_clusters", 0),
        ("lr", 0.0),
        ("lr", "fast"),
        ("key_momentum", 1.5),
        ("optimizer", "adam"),
        ("augmentation", "strong"),
        ("image_shape", "square"),
    ],
)
def test_invalid_parameter(gray_u8, fast_params, param, value):
    est = CueCoEmbedder(**fast_params(**{param: value}))
    with pytest.raises(InvalidParameterError, match=f"'{param}' parameter"):
        est.fit(gray_u8)
    assert issubclass(InvalidParameterError, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cuda_requested_without_gpu(gray_u8, fast_params):
    est = CueCoEmbedder(**fast_params(device="cuda"))
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        est.fit(gray_u8)


def test_invalid_device_name(gray_u8, fast_params):
    with pytest.raises(ValueError, match="'tpu0' is not a valid torch device"):
        _fit(gray_u8, fast_params, device="tpu0")


def test_more_clusters_than_samples(make_images, fast_params):
    with pytest.raises(ValueError, match="n_clusters=6 must be <= n_samples=5"):
        _fit(make_images((8, 8), n=5), fast_params, n_clusters=6)


def test_augmentation_not_suited_to_input(gray_u8, fast_params):
    with pytest.raises(ValueError, match="needs 3-channel images"):
        _fit(gray_u8, fast_params, augmentation="rgb")


def test_callbacks_must_be_callbacks(gray_u8, fast_params):
    with pytest.raises(TypeError, match="Callback"):
        _fit(gray_u8, fast_params, callbacks=[print])


# -- non-finite loss ---------------------------------------------------------------


def test_huge_learning_rate_raises_and_leaves_estimator_unfitted(gray_u8, fast_params):
    est = CueCoEmbedder(**fast_params(lr=1e12, max_epochs=10))
    with pytest.raises(NonFiniteLossError, match="learning rate"):
        est.fit(gray_u8)
    assert issubclass(NonFiniteLossError, FloatingPointError)
    # no half-trained model with NaN weights may be used afterwards
    with pytest.raises(NotFittedError):
        est.transform(gray_u8)
    with pytest.raises(NotFittedError):
        est.predict(gray_u8)


def test_failed_refit_keeps_the_previous_model(gray_u8, vectors, fast_params):
    est = _fit(vectors, fast_params)
    Z = est.transform(vectors)
    before = {k: v for k, v in vars(est).items() if k.endswith("_")}
    est.set_params(lr=1e12, max_epochs=10)
    with pytest.raises(NonFiniteLossError):
        est.fit(gray_u8)
    # the previous model, whole: never the new input description (64
    # features) paired with the model fitted on 5-feature vectors
    assert {k: v for k, v in vars(est).items() if k.endswith("_")}.keys() == before.keys()
    assert est.n_features_in_ == vectors.shape[1]
    assert_array_equal(est.transform(vectors), Z)
    with pytest.raises(ValueError, match="features"):
        est.transform(gray_u8)


def test_refit_rejected_by_validation_keeps_the_previous_model(vectors, fast_params):
    est = _fit(vectors, fast_params)
    Z, centers = est.transform(vectors), est.cluster_centers_.copy()
    bad = vectors.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        est.fit(bad)
    with pytest.raises(ValueError):
        est.fit(vectors[:2])  # fewer samples than n_clusters
    assert_array_equal(est.transform(vectors), Z)
    assert_array_equal(est.cluster_centers_, centers)


# -- persistence -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_pickle_round_trip(fitted_rgb, tmp_path, how):
    est, X = fitted_rgb
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(est))
    else:
        path = tmp_path / "embedder.joblib"
        joblib.dump(est, path)
        loaded = joblib.load(path)
    assert loaded is not est
    assert_array_equal(loaded.transform(X), est.transform(X))
    assert_array_equal(loaded.predict(X), est.predict(X))
    assert_array_equal(loaded.cluster_centers_, est.cluster_centers_)
    assert loaded.device_ == est.device_
    assert loaded.image_shape_ == est.image_shape_
    pd.testing.assert_frame_equal(loaded.history_, est.history_)
    # the original keeps working after being pickled
    assert est.transform(X[:2]).shape[0] == 2


# -- custom backbone and augmentation ------------------------------------------------


def test_custom_backbone_is_used_and_not_modified(rgb_u8, fast_params):
    backbone = _tiny_cnn(3)
    before = copy.deepcopy(backbone.state_dict())
    est = _fit(rgb_u8, fast_params, backbone=backbone)
    after = backbone.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert backbone.training  # its mode is not changed either
    assert est.encoder_ is not backbone
    Z = est.transform(rgb_u8)
    # the custom backbone's 16 features and the projection, side by side
    assert Z.shape == (len(rgb_u8), 16 + est.projection_dim)
    assert len(est.get_feature_names_out()) == 16 + est.projection_dim
    # the copy was trained
    trained = est.encoder_.state_dict()
    assert any(not torch.equal(before[k], trained[k].cpu()) for k in before)
    loaded = pickle.loads(pickle.dumps(est))
    assert_array_equal(loaded.transform(rgb_u8), Z)


def test_custom_backbone_with_wrong_input_raises(gray_u8, fast_params):
    # a 3-channel module cannot take grayscale images
    with pytest.raises(ValueError, match=r"does not accept input of shape \(N, 1, 8, 8\)"):
        _fit(gray_u8, fast_params, backbone=_tiny_cnn(3))


def test_callable_augmentation_is_used(gray_u8, fast_params):
    calls = []

    def augment(x):
        calls.append((tuple(x.shape), x.dtype, float(x.min()), float(x.max())))
        return x.flip(-1)

    max_epochs, batch_size = 2, 16
    _fit(gray_u8, fast_params, augmentation=augment, max_epochs=max_epochs,
         batch_size=batch_size)
    steps = max_epochs * (len(gray_u8) // batch_size)
    assert len(calls) == 2 * steps  # two views per step
    for shape, dtype, lo, hi in calls:
        assert shape == (batch_size, 1, 8, 8)
        assert dtype == torch.float32
        assert 0.0 <= lo <= hi <= 1.0


def test_embedding_statistics_pool_over_partial_fit_calls(make_images, fast_params):
    from skcueco.training.run import embedding_statistics

    a, b = torch.randn(7, 5, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64) + 3
    pooled = embedding_statistics(b, embedding_statistics(a))
    whole = torch.cat([a, b])
    assert pooled["count"] == 18
    torch.testing.assert_close(pooled["mean"], whole.mean(0))
    torch.testing.assert_close(pooled["var"], whole.var(0, correction=0))
    # partial_fit pools its calls; fit starts over
    X = make_images((8, 8, 3))
    est = CueCoEmbedder(**fast_params()).partial_fit(X[:20]).partial_fit(X[20:])
    assert est._trained.train_state["embedding_stats"]["count"] == len(X)
    est.fit(X[:30])
    assert est._trained.train_state["embedding_stats"]["count"] == 30


def test_augmented_features_for_heads_are_standardised_like_transform(fitted_rgb):
    # heads trained on augmented views (linear evaluation) must see the space
    # transform returns: with no augmentation the two coincide
    est, X = fitted_rgb
    est = copy.deepcopy(est)
    est.augmentation = "none"
    from skcueco._classifier import _frozen_features
    rows, features, augment = _frozen_features(est, X, augment_seed=0)
    np.testing.assert_allclose(augment(torch.from_numpy(rows)).cpu().numpy(), features,
                               rtol=1e-4, atol=1e-4)


def test_end_of_fit_pass_in_pieces_gives_the_statistics_and_projections_of_one(
        make_images, fast_params, monkeypatch):
    from skcueco.training import run

    X = make_images((8, 8, 3))
    whole = CueCoEmbedder(**fast_params()).fit(X)
    # pieces of one batch each: the same model, statistics and projections
    monkeypatch.setattr(run, "EVAL_PASS_FEATURE_VALUES", 1)
    pieces = CueCoEmbedder(**fast_params()).fit(X)
    np.testing.assert_allclose(pieces.embedding_mean_, whole.embedding_mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pieces.embedding_scale_, whole.embedding_scale_, rtol=1e-5)
    assert_array_equal(pieces.cluster_centers_, whole.cluster_centers_)
    assert_array_equal(pieces.predict(X), whole.predict(X))

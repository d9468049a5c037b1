"""``embedding_space``: transform returns the standardised features, the unit
projections, or both side by side (``"joint"``, the default)."""

import importlib.util
import pickle

import numpy as np
import pytest
import torch

from sklearn.frozen import FrozenEstimator

from skcueco import CueCoClassifier, CueCoEmbedder
from skcueco.nn.vote import vote_clusters

HAS_ONNX = all(importlib.util.find_spec(m) is not None
               for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def fitted(fast_params, make_images):
    X = make_images((8, 8), dtype=np.float32)
    return CueCoEmbedder(**fast_params()).fit(X), X


def test_projection_space_is_what_predict_reads(fitted):
    est, X = fitted
    est.set_params(embedding_space="projection")
    try:
        Z = est.transform(X)
        assert Z.dtype == np.float32 and Z.shape == (len(X), est.cluster_centers_.shape[1])
        np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
        # predict is the vote of the prototypes nearest these very rows
        voted = vote_clusters(torch.from_numpy(Z), torch.from_numpy(est.cluster_prototypes_),
                              torch.from_numpy(est.cluster_prototype_labels_),
                              est.n_clusters, est._trained.prototype_votes).numpy()
        np.testing.assert_array_equal(voted, est.predict(X))
        names = est.get_feature_names_out()
        assert len(names) == Z.shape[1] and names[0] == "cuecoembedder0"
    finally:
        est.set_params(embedding_space="joint")


def _in(est, space, X):
    """``transform`` of ``X`` in ``space``, the estimator's own space restored."""
    own = est.embedding_space
    try:
        return est.set_params(embedding_space=space).transform(X)
    finally:
        est.set_params(embedding_space=own)


def test_the_default_space_is_joint(fitted):
    est, X = fitted
    assert CueCoEmbedder().embedding_space == "joint"
    np.testing.assert_array_equal(est.transform(X), _in(est, "joint", X))


def test_joint_is_the_unit_features_and_projections_side_by_side(fitted):
    est, X = fitted
    Z, F, P = est.transform(X), _in(est, "features", X), _in(est, "projection", X)
    n_features, n_projection = F.shape[1], P.shape[1]
    assert Z.dtype == np.float32 and Z.shape == (len(X), n_features + n_projection)
    assert len(est.get_feature_names_out()) == Z.shape[1]
    # each half is a unit vector times sqrt(n / 2): rows of norm sqrt(n)
    n = Z.shape[1]
    unit_features = F / np.linalg.norm(F, axis=1, keepdims=True)
    np.testing.assert_allclose(Z[:, :n_features], unit_features * np.sqrt(n / 2), atol=1e-5)
    np.testing.assert_allclose(Z[:, n_features:], P * np.sqrt(n / 2), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), np.sqrt(n), rtol=1e-5)
    # so a cosine similarity is the mean of the two spaces' similarities
    cosine = (Z @ Z.T) / n
    both = 0.5 * (unit_features @ unit_features.T + P @ P.T)
    np.testing.assert_allclose(cosine, both, atol=1e-5)
    # bitwise the same whatever the batch: a row alone, then in the whole set
    np.testing.assert_array_equal(est.transform(X[3:4]), Z[3:4])


def test_switching_the_space_needs_no_refit_and_leaves_the_features(fitted):
    est, X = fitted
    before = _in(est, "features", X)
    state = pickle.dumps(est._trained.encoder.state_dict())
    projected = _in(est, "projection", X)
    joint = est.transform(X)
    after = _in(est, "features", X)
    np.testing.assert_array_equal(before, after)
    assert before.shape[1] != projected.shape[1]
    assert joint.shape[1] == before.shape[1] + projected.shape[1]
    assert pickle.dumps(est._trained.encoder.state_dict()) == state
    # the features are standardised on the training set, the projections are not
    np.testing.assert_allclose(before.mean(0), 0.0, atol=1e-4)


def test_the_classifier_heads_read_the_space_transform_returns(fitted):
    est, X = fitted
    y = np.arange(len(X)) % 3
    params = dict(head="linear", head_epochs=3, random_state=0)
    for space in ("features", "joint", "projection"):
        est.set_params(embedding_space=space)
        try:
            clf = CueCoClassifier(embedder=FrozenEstimator(est), **params).fit(X, y)
            Z = est.transform(X)
        finally:
            est.set_params(embedding_space="joint")
        # trained and read in the same space: the head's width and its
        # standardisation are those of transform's output
        assert clf.head_.module_.linear.in_features == Z.shape[1]
        np.testing.assert_allclose(clf.head_.module_.mean.numpy(), Z.mean(axis=0),
                                   rtol=1e-4, atol=1e-5)
        est.set_params(embedding_space=space)
        try:
            np.testing.assert_array_equal(clf.predict_proba(X),
                                          clf.head_.predict_proba(est.transform(X)))
        finally:
            est.set_params(embedding_space="joint")


def test_pandas_output_follows_the_space(fitted):
    pd = pytest.importorskip("pandas")
    est, X = fitted
    est.set_params(embedding_space="projection").set_output(transform="pandas")
    try:
        frame = est.transform(X)
        assert isinstance(frame, pd.DataFrame)
        assert frame.shape == (len(X), est.cluster_centers_.shape[1])
    finally:
        est.set_params(embedding_space="joint").set_output(transform="default")


def test_bad_space_is_refused_at_fit_and_at_transform(fitted, fast_params, make_images):
    with pytest.raises(ValueError, match="embedding_space"):
        CueCoEmbedder(**fast_params(embedding_space="logits")).fit(make_images((8, 8)))
    est, X = fitted
    est.set_params(embedding_space="logits")
    try:
        with pytest.raises(ValueError, match="embedding_space must be one of 'joint', "
                                             "'features', 'projection'; got 'logits'"):
            est.transform(X)
    finally:
        est.set_params(embedding_space="joint")


def test_the_space_is_saved_and_an_older_pickle_returns_the_features(fitted, tmp_path):
    est, X = fitted
    est.set_params(embedding_space="projection")
    try:
        est.save(tmp_path / "m.pt", training_state=False)
        expected = est.transform(X)
    finally:
        est.set_params(embedding_space="joint")
    loaded = CueCoEmbedder.load(tmp_path / "m.pt")
    assert loaded.embedding_space == "projection"
    np.testing.assert_array_equal(loaded.transform(X), expected)
    # an estimator pickled before the parameter existed has no such attribute:
    # it returns the features, as it did then
    state = est.__getstate__()
    del state["embedding_space"]
    old = CueCoEmbedder.__new__(CueCoEmbedder)
    old.__setstate__(state)
    assert old.embedding_space == "features"
    np.testing.assert_array_equal(old.transform(X), _in(est, "features", X))


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime")
def test_export_outputs_the_projections_transform_returns(fitted, tmp_path):
    import onnxruntime as ort

    est, X = fitted
    est.set_params(embedding_space="projection")
    try:
        est.export(tmp_path / "m.onnx", input_layout="NHW")
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        embeddings, clusters = session.run(None, {name: X[:37].astype(np.float32)})
        np.testing.assert_allclose(embeddings, est.transform(X[:37]), atol=1e-4)
        np.testing.assert_array_equal(clusters, est.predict(X[:37]))
    finally:
        est.set_params(embedding_space="joint")
    assert torch.is_tensor(est._trained.centroids)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("space", ["joint", "features", "projection"])
def test_torchscript_export_outputs_what_transform_returns(fitted, tmp_path, space):
    est, X = fitted
    est.set_params(embedding_space=space)
    try:
        est.export(tmp_path / "m.pt", format="torchscript", input_layout="NHW")
        expected = est.transform(X[:37])
    finally:
        est.set_params(embedding_space="joint")
    graph = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        embeddings, clusters = graph(torch.from_numpy(X[:37].astype(np.float32)))
    np.testing.assert_allclose(embeddings.numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(clusters.numpy(), est.predict(X[:37]))

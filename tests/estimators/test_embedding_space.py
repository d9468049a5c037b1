"""``embedding_space``: transform returns the standardised features or the unit projections."""

import importlib.util
import pickle

import numpy as np
import pytest
import torch

from skcueco import CueCoEmbedder
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
        est.set_params(embedding_space="features")


def test_switching_the_space_needs_no_refit_and_leaves_the_features(fitted):
    est, X = fitted
    before = est.transform(X)
    state = pickle.dumps(est._trained.encoder.state_dict())
    est.set_params(embedding_space="projection")
    projected = est.transform(X)
    est.set_params(embedding_space="features")
    after = est.transform(X)
    np.testing.assert_array_equal(before, after)
    assert before.shape[1] != projected.shape[1]
    assert pickle.dumps(est._trained.encoder.state_dict()) == state
    # the features are standardised on the training set, the projections are not
    np.testing.assert_allclose(before.mean(0), 0.0, atol=1e-4)


def test_pandas_output_follows_the_space(fitted):
    pd = pytest.importorskip("pandas")
    est, X = fitted
    est.set_params(embedding_space="projection").set_output(transform="pandas")
    try:
        frame = est.transform(X)
        assert isinstance(frame, pd.DataFrame)
        assert frame.shape == (len(X), est.cluster_centers_.shape[1])
    finally:
        est.set_params(embedding_space="features").set_output(transform="default")


def test_bad_space_is_refused_at_fit_and_at_transform(fitted, fast_params, make_images):
    with pytest.raises(ValueError, match="embedding_space"):
        CueCoEmbedder(**fast_params(embedding_space="logits")).fit(make_images((8, 8)))
    est, X = fitted
    est.set_params(embedding_space="logits")
    try:
        with pytest.raises(ValueError, match="embedding_space must be 'features' or 'projection'"):
            est.transform(X)
    finally:
        est.set_params(embedding_space="features")


def test_the_space_is_saved_and_an_older_pickle_returns_the_features(fitted, tmp_path):
    est, X = fitted
    est.set_params(embedding_space="projection")
    try:
        est.save(tmp_path / "m.pt", training_state=False)
        expected = est.transform(X)
    finally:
        est.set_params(embedding_space="features")
    loaded = CueCoEmbedder.load(tmp_path / "m.pt")
    assert loaded.embedding_space == "projection"
    np.testing.assert_array_equal(loaded.transform(X), expected)
    # an estimator pickled before the parameter existed has no such attribute
    old = pickle.loads(pickle.dumps(est))
    del old.__dict__["embedding_space"]
    np.testing.assert_array_equal(old.transform(X), est.transform(X))


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
        est.set_params(embedding_space="features")
    assert torch.is_tensor(est._trained.centroids)

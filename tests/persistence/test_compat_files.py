"""Model files and checkpoints written by an earlier version still work.

The files under ``tests/persistence/fixtures/files_0.1.0`` were written by skcueco 0.1.0
with ``make_fixtures.py`` beside them. Loading them must give bitwise the same
embeddings and clusters as that version computed, and a checkpoint must resume
to bitwise the same model as the run that wrote it.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder

FILES = Path(__file__).parent / "fixtures" / "files_0.1.0"
COMMON = dict(max_epochs=2, batch_size=32, n_clusters=4, random_state=0, amp=False,
              hidden_dim=32, projection_dim=16)


@pytest.fixture(scope="module")
def digits():
    X, _ = load_digits(return_X_y=True)
    return X[:120].astype(np.float32)


def test_model_file_gives_the_same_embeddings_and_clusters(digits):
    emb = CueCoEmbedder.load(FILES / "embedder_digits.pt")
    np.testing.assert_array_equal(emb.transform(digits),
                                  np.load(FILES / "embedder_digits_transform.npy"))
    np.testing.assert_array_equal(emb.predict(digits),
                                  np.load(FILES / "embedder_digits_predict.npy"))
    assert emb.get_params()["n_clusters"] == 4
    assert emb.cluster_centers_.shape == (4, 16)


def test_model_file_keeps_its_training_state(digits):
    emb = CueCoEmbedder.load(FILES / "embedder_digits.pt")
    # written before cluster_targets existed: it goes on training as it was
    # trained, towards the centroids
    assert emb.cluster_targets == "centroids"
    before = emb.transform(digits)
    emb.partial_fit(digits)
    assert emb.n_iter_ == 3
    assert not np.array_equal(emb.transform(digits), before)


def test_image_model_file_gives_the_same_embeddings():
    images = np.load(FILES / "images.npy")
    emb = CueCoEmbedder.load(FILES / "embedder_images.pt")
    assert emb.image_shape_ == (1, 8, 8)
    np.testing.assert_array_equal(emb.transform(images),
                                  np.load(FILES / "embedder_images_transform.npy"))


def test_checkpoint_resumes_to_the_same_model(digits, tmp_path):
    # written before cluster_targets existed, it trained towards the centroids:
    # resuming it towards the graph (the default since) is refused by name
    with pytest.raises(ValueError, match="cluster_targets='centroids' in the checkpoint"):
        CueCoEmbedder(**COMMON).fit(digits, resume_from=FILES / "checkpoint_epoch-0001.pt")
    # ... and so is a different key_momentum (0.99, the default then)
    with pytest.raises(ValueError, match="key_momentum=0.99 in the checkpoint, 0.98 here"):
        CueCoEmbedder(**COMMON, cluster_targets="centroids", cluster_negatives="keep").fit(
            digits, resume_from=FILES / "checkpoint_epoch-0001.pt")
    # ... and leaving out same-cluster negatives (the default since): it kept them
    with pytest.raises(ValueError, match="cluster_negatives='keep' in the checkpoint"):
        CueCoEmbedder(**COMMON, cluster_targets="centroids", key_momentum=0.99).fit(
            digits, resume_from=FILES / "checkpoint_epoch-0001.pt")
    # ... and neighbours as positives (the default since): its positives were the views
    with pytest.raises(ValueError, match="cluster_positives='view' in the checkpoint"):
        CueCoEmbedder(**COMMON, cluster_targets="centroids", key_momentum=0.99,
                      cluster_negatives="keep").fit(
            digits, resume_from=FILES / "checkpoint_epoch-0001.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = CueCoEmbedder(**COMMON, cluster_targets="centroids", key_momentum=0.99,
                            cluster_negatives="keep", cluster_positives="view").fit(
            digits, resume_from=FILES / "checkpoint_epoch-0001.pt")
    assert emb.n_iter_ == 2
    # the file holds the standardised features, transform's output then
    emb.set_params(embedding_space="features")
    np.testing.assert_array_equal(emb.transform(digits),
                                  np.load(FILES / "embedder_digits_transform.npy"))

"""save/load for every kind of input description (vectors have per-feature scaling)."""

import numpy as np
import pytest

from skcueco import CueCoEmbedder

FAST = dict(max_epochs=1, batch_size=32, hidden_dim=32, projection_dim=8, queue_size=32,
            n_clusters=2, random_state=0)


@pytest.mark.parametrize("shape, params", [
    ((60, 5), {}),                       # plain vectors: standardised per feature
    ((60, 8, 8, 3), {}),                 # channels-last RGB images
    ((60, 3, 8, 8), {}),                 # channels-first RGB images
    ((60, 48), {"image_shape": (4, 4, 3)}),
])
def test_save_load_round_trip(tmp_path, shape, params):
    X = np.random.default_rng(0).uniform(0, 200, size=shape)
    est = CueCoEmbedder(**FAST, **params).fit(X)
    est.save(tmp_path / "m.pt")
    loaded = CueCoEmbedder.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.transform(X), est.transform(X))
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    assert loaded.get_params() == est.get_params()


def _drop_pool_mode(obj):
    """The payload as a version that did not store the small CNN's pooling."""
    if isinstance(obj, dict):
        return {k: _drop_pool_mode(v) for k, v in obj.items()
                if not (isinstance(k, str) and k.endswith("pool.max_pool"))}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_drop_pool_mode(v) for v in obj)
    return obj


def test_files_from_before_max_pooling_keep_average_pooling(tmp_path):
    import torch

    X = np.random.default_rng(0).uniform(0, 16, size=(60, 8, 8))
    est = CueCoEmbedder(**FAST).fit(X)
    assert est.encoder_.pool.mode == "max"
    est.save(tmp_path / "new.pt")
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    old = _drop_pool_mode(payload)
    assert "pool.max_pool" not in old["encoder"]
    torch.save(old, tmp_path / "old.pt")

    loaded = CueCoEmbedder.load(tmp_path / "old.pt")
    assert loaded.encoder_.pool.mode == "avg"
    # the features are those of average pooling, not of the new default
    for model in (loaded, est):
        model.set_params(embedding_space="features")
    assert not np.allclose(loaded.transform(X) * loaded.embedding_scale_,
                           est.transform(X) * est.embedding_scale_)
    # continuing training keeps the pooling the weights were trained with
    loaded.set_params(warm_start=True).fit(X)
    assert loaded.encoder_.pool.mode == "avg"
    assert CueCoEmbedder.load(tmp_path / "new.pt").encoder_.pool.mode == "max"


def test_files_of_a_three_block_small_cnn_keep_it(tmp_path, monkeypatch):
    # a file saved when the small CNN had three blocks at every image size
    from skcueco import backbones

    class ThreeBlocks(backbones.SmallCNN):
        def __init__(self, in_channels=1, width=32, pool="max", depth=3):
            super().__init__(in_channels, width, pool, depth=3)

    X = np.random.default_rng(0).uniform(0, 255, size=(60, 20, 20))
    with monkeypatch.context() as patch:
        patch.setattr(backbones, "SmallCNN", ThreeBlocks)
        old = CueCoEmbedder(**FAST).fit(X)
        old.save(tmp_path / "old.pt")
    assert old.encoder_.depth == 3
    assert CueCoEmbedder(**FAST).fit(X).encoder_.depth == 4  # today's network

    loaded = CueCoEmbedder.load(tmp_path / "old.pt")
    assert loaded.encoder_.depth == 3
    np.testing.assert_array_equal(loaded.transform(X), old.transform(X))
    # continuing training (optimiser state included) keeps the three blocks
    loaded.set_params(warm_start=True).fit(X)
    assert loaded.encoder_.depth == 3
    assert np.isfinite(loaded.transform(X)).all()


def test_a_pickle_from_before_cluster_targets_trains_towards_the_centroids():
    import pickle

    X = np.random.default_rng(0).uniform(0, 200, size=(60, 5))
    est = CueCoEmbedder(**FAST).fit(X)
    state = est.__getstate__()
    del state["cluster_targets"]  # as a version without the parameter pickled it
    old = CueCoEmbedder.__new__(CueCoEmbedder)
    old.__setstate__(state)
    assert old.cluster_targets == "centroids"
    np.testing.assert_array_equal(old.transform(X), est.transform(X))
    # a pickle of this version keeps its setting
    assert pickle.loads(pickle.dumps(est)).cluster_targets == "auto"

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

"""Over-clustering: a second, finer set of centroids trained with the clustering term."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from skcueco import CueCoEmbedder
from skcueco.nn.losses import proto_nce, sinkhorn_assign
from skcueco.nn.model import CueCoModel
from skcueco.recipes import recipe, recipe_names

N_FEATURES = 12
FEATURE_DIM = 16
PROJ_DIM = 8


def _model(n_clusters=3, n_overclusters=9, seed=0, **kwargs):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(N_FEATURES, FEATURE_DIM),
                             nn.BatchNorm1d(FEATURE_DIM), nn.ReLU())
    return CueCoModel(backbone, FEATURE_DIM, projection_dim=PROJ_DIM, hidden_dim=32,
                      queue_size=16, n_clusters=n_clusters, n_overclusters=n_overclusters,
                      cluster_loss="proto", cluster_assign="sinkhorn",
                      generator=torch.Generator().manual_seed(seed), **kwargs)


def _keys(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, PROJ_DIM, generator=g), dim=1)


@pytest.fixture(scope="module")
def digits():
    X, _ = load_digits(return_X_y=True)
    return X[:300]


def _small(**params):
    defaults = dict(hidden_dim=32, projection_dim=16, batch_size=64, max_epochs=3,
                    cluster_warmup=1, n_clusters=4, random_state=0, device="cpu")
    return CueCoEmbedder(**{**defaults, **params})


# ------------------------------------------------------------------------- model


@pytest.mark.parametrize("bad", [-1, 2.5, True, "3"])
def test_model_rejects_a_bad_overcluster_count(bad):
    with pytest.raises(ValueError, match="n_overclusters"):
        _model(n_overclusters=bad)


def test_init_centroids_also_initialises_the_finer_set():
    model = _model()
    assert model.bank.wants_overclusters
    model.init_centroids(_keys())
    assert not model.bank.wants_overclusters
    assert bool(model.bank.overclusters_ready)
    assert model.bank.overclusters.shape == (9, PROJ_DIM)
    # unit-norm k-means centroids, not the zeros the buffer started with
    torch.testing.assert_close(model.bank.overclusters.norm(dim=1), torch.ones(9))


def test_too_few_keys_leave_the_finer_set_out():
    model = _model(n_overclusters=50)
    model.init_centroids(_keys(n=40))
    assert bool(model.centroids_ready)
    assert not bool(model.bank.overclusters_ready)
    assert torch.count_nonzero(model.bank.overclusters) == 0
    # the clustering term is then the term against the K centroids alone
    z, k = _keys(n=8, seed=2), _keys(n=8, seed=3)
    alone = proto_nce(z, model.centroids, sinkhorn_assign(k, model.centroids), 0.1)
    torch.testing.assert_close(model._cluster_term(z, k), alone)


def test_cluster_term_is_the_mean_over_the_two_sets():
    model = _model()
    model.init_centroids(_keys())
    z, k = _keys(n=8, seed=2), _keys(n=8, seed=3)
    coarse = proto_nce(z, model.centroids, sinkhorn_assign(k, model.centroids), 0.1)
    fine = proto_nce(z, model.bank.overclusters, sinkhorn_assign(k, model.bank.overclusters), 0.1)
    torch.testing.assert_close(model._cluster_term(z, k), 0.5 * (coarse + fine))
    assert not torch.allclose(coarse, fine)


def test_update_moves_both_sets_and_prediction_reads_the_coarse_one():
    model = _model()
    model.init_centroids(_keys())
    coarse, fine = model.centroids.clone(), model.bank.overclusters.clone()
    model.bank.update(_keys(n=32, seed=4))
    assert not torch.equal(model.centroids, coarse)
    assert not torch.equal(model.bank.overclusters, fine)
    fine = model.bank.overclusters.clone()
    model.refine_centroids(_keys(n=40, seed=5), n_iter=5)
    # refinement is for predict: the finer set stays as training left it
    torch.testing.assert_close(model.bank.overclusters, fine, rtol=0, atol=0)
    x = torch.randn(6, N_FEATURES)
    model.eval()
    assert model.predict_clusters(x).max() < 3


def test_dead_centroids_of_the_finer_set_are_reseeded():
    model = _model()
    model.init_centroids(_keys())
    model.enqueue(_keys(n=16, seed=6))
    model.bank.overcluster_empty_steps[2] = 100
    before = model.bank.overclusters[2].clone()
    assert model.bank.reseed(model.queue.keys, 50) == 1
    assert not torch.equal(model.bank.overclusters[2], before)
    assert model.bank.overcluster_empty_steps[2] == 0
    # the new centroid is one of the queue's keys
    assert (model.queue.keys @ model.bank.overclusters[2]).max() > 1 - 1e-5


def test_states_without_the_finer_set_load_and_initialise_it_later():
    model = _model()
    model.init_centroids(_keys())
    old = {k: v for k, v in model.state_dict().items() if "overcluster" not in k}
    fresh = _model(seed=1)
    fresh.load_state_dict(old)  # strict: the missing set is not an error
    assert bool(fresh.centroids_ready) and fresh.bank.wants_overclusters
    torch.testing.assert_close(fresh.centroids, model.centroids, rtol=0, atol=0)
    # not ready: the clustering term uses the K centroids alone until then
    z, k = _keys(n=8, seed=2), _keys(n=8, seed=3)
    alone = proto_nce(z, fresh.centroids, sinkhorn_assign(k, fresh.centroids), 0.1)
    torch.testing.assert_close(fresh._cluster_term(z, k), alone)
    assert fresh.bank.initialise_overclusters(_keys())
    assert not fresh.bank.wants_overclusters


def test_a_state_with_the_set_turns_it_on_when_loaded():
    model = _model()
    model.init_centroids(_keys())
    other = _model(seed=1)
    other.load_state_dict(model.state_dict())
    z, k = _keys(n=8, seed=2), _keys(n=8, seed=3)
    torch.testing.assert_close(other._cluster_term(z, k), model._cluster_term(z, k))


# --------------------------------------------------------------------- estimator


@pytest.mark.parametrize("bad", [-1, 1.5, "auto"])
def test_estimator_validates_overclustering(digits, bad):
    with pytest.raises(ValueError, match="overclustering"):
        _small(overclustering=bad).fit(digits)


def test_default_trains_like_explicit_three_and_unlike_none(digits):
    default = _small().fit(digits)
    three = _small(overclustering=3).fit(digits)
    none = _small(overclustering=0).fit(digits)
    np.testing.assert_array_equal(default.transform(digits), three.transform(digits))
    assert not np.array_equal(default.transform(digits), none.transform(digits))
    # predict keeps n_clusters centroids whatever the finer set
    assert default.cluster_centers_.shape == (4, 16)
    assert set(np.unique(default.predict(digits))) <= set(range(4))


def test_training_state_holds_the_finer_set(digits):
    est = _small(overclustering=2).fit(digits)
    model = est._trained.train_state["task"]["model"]
    assert model["overclusters"].shape == (8, 16)
    assert bool(model["overclusters_ready"])
    assert torch.isfinite(model["overclusters"]).all()


def test_warm_start_from_a_state_without_the_set_initialises_it(digits):
    est = _small().fit(digits)
    model = est._trained.train_state["task"]["model"]
    for key in [k for k in model if "overcluster" in k]:
        del model[key]
    est.set_params(warm_start=True, max_epochs=1).fit(digits)
    model = est._trained.train_state["task"]["model"]
    assert bool(model["overclusters_ready"])
    assert model["overclusters"].shape == (12, 16)
    torch.testing.assert_close(model["overclusters"].norm(dim=1), torch.ones(12))


@pytest.mark.filterwarnings("ignore::skcueco.training.run.TrainingCollapseWarning")
def test_small_training_sets_leave_the_set_out(digits):
    # 4 centroids x 3 = 12 > 10 samples: the fit trains the 4 centroids alone
    est = _small(max_epochs=2, batch_size=8).fit(digits[:10])
    assert not bool(est._trained.train_state["task"]["model"]["overclusters_ready"])
    assert np.isfinite(est.transform(digits[:10])).all()


def test_recipes_keep_one_set_of_centroids():
    for name in recipe_names():
        assert recipe(name)["overclustering"] == 0


def test_warm_start_with_another_set_size_is_a_clear_error(digits):
    est = _small().fit(digits)
    before = est.transform(digits)
    with pytest.raises(ValueError, match="overclusters"):
        est.set_params(warm_start=True, overclustering=1).fit(digits)
    # the failed fit left the fitted model as it was
    np.testing.assert_array_equal(est.transform(digits), before)

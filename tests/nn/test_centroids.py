"""Tests of the centroid bank: assignment, k-means initialisation, online update,
re-seeding, refinement, and how its state is stored in the model's state dict."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skcueco.nn.centroids import CentroidBank
from skcueco.nn.losses import assign_clusters, sinkhorn_assign
from skcueco.nn.model import CueCoModel

N_FEATURES = 12
FEATURE_DIM = 16
PROJ_DIM = 8


def _bank(n_clusters=3, seed=0, **kwargs):
    return CentroidBank(n_clusters, PROJ_DIM, generator=torch.Generator().manual_seed(seed),
                        **kwargs)


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(N_FEATURES, FEATURE_DIM),
                             nn.BatchNorm1d(FEATURE_DIM), nn.ReLU())
    params = dict(projection_dim=PROJ_DIM, hidden_dim=32, queue_size=16, n_clusters=3,
                  generator=torch.Generator().manual_seed(seed))
    return CueCoModel(backbone, FEATURE_DIM, **{**params, **kwargs})


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# ----------------------------------------------------------------- k-means and updates


def _blobs(n_per=40, n_blobs=3, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    # orthonormal centres: well separated (cos 0)
    centres = torch.linalg.qr(torch.randn(PROJ_DIM, PROJ_DIM, generator=g))[0][:n_blobs]
    keys = centres.repeat_interleave(n_per, 0)
    keys = F.normalize(keys + noise * torch.randn(keys.shape, generator=g), dim=1)
    perm = torch.randperm(keys.shape[0], generator=g)
    labels = torch.arange(n_blobs).repeat_interleave(n_per)
    return keys[perm], labels[perm], centres


def _check_covers(centroids, centres, min_cos=0.95):
    sims = centroids @ centres.T  # (K, n_blobs)
    best = sims.argmax(1)
    assert torch.all(sims.max(1).values > min_cos), sims
    assert set(best.tolist()) == set(range(centres.shape[0]))


def test_init_and_update_centroids_find_blobs():
    keys, _, centres = _blobs()
    bank = _bank(n_clusters=3)
    bank.initialise(keys)
    assert bool(bank.centroids_ready)
    _check_covers(bank.centroids, centres)
    for i in range(20):
        batch = keys[(i * 16) % keys.shape[0]:][:16]
        bank.update(batch)
        torch.testing.assert_close(bank.centroids.norm(dim=1), torch.ones(3))
    _check_covers(bank.centroids, centres)


def test_update_centroids_pulls_perturbed_centroids_to_blobs():
    keys, _, centres = _blobs()
    bank = _bank(n_clusters=3, momentum=0.9)
    start = F.normalize(centres + 0.5 * _unit(3, PROJ_DIM, seed=7), dim=1)
    bank.centroids.copy_(start)
    assert (bank.centroids @ centres.T).diag().min() < 0.95  # really perturbed
    for _ in range(60):
        bank.update(keys)
        torch.testing.assert_close(bank.centroids.norm(dim=1), torch.ones(3))
    assert (bank.centroids @ centres.T).diag().min() > 0.95


def test_update_centroids_formula_and_empty_cluster_unchanged():
    keys, labels, centres = _blobs(n_blobs=2)
    bank = _bank(n_clusters=3, momentum=0.8)
    far = F.normalize(-(centres[0] + centres[1]), dim=0)  # negative cos with every key
    start = torch.stack([centres[0], centres[1], far])
    bank.centroids.copy_(start)
    a = (keys @ start.T).argmax(1)
    assert set(a.tolist()) == {0, 1}
    expected = start.clone()
    for k in (0, 1):
        mean = keys[a == k].mean(0)
        expected[k] = F.normalize(0.8 * start[k] + 0.2 * mean, dim=0)

    bank.update(keys)
    torch.testing.assert_close(bank.centroids, expected)
    assert torch.equal(bank.centroids[2], far)  # unassigned: untouched
    assert bank.empty_steps.tolist() == [0, 0, 1]
    bank.update(keys)
    assert bank.empty_steps.tolist() == [0, 0, 2]


def _bank_with_dead_centroid():
    keys, _, centres = _blobs(n_blobs=2)
    bank = _bank(n_clusters=3)
    queue = keys[:16].clone()
    far = F.normalize(-(centres[0] + centres[1]), dim=0)
    bank.centroids.copy_(torch.stack([centres[0], centres[1], far]))
    return bank, queue, keys, far


def test_reseed_dead_centroid_moves_it_onto_a_candidate():
    bank, queue, keys, far = _bank_with_dead_centroid()
    n = 4
    for _ in range(n - 1):
        bank.update(keys)
    assert bank.reseed(queue, n) == 0  # not dead long enough yet
    assert torch.equal(bank.centroids[2], far)

    bank.update(keys)
    assert int(bank.empty_steps[2]) == n
    alive = bank.centroids[:2].clone()
    assert bank.reseed(queue, n) == 1
    # moved onto exactly one of the candidates
    match = (queue == bank.centroids[2]).all(dim=1)
    assert match.any()
    assert torch.equal(bank.centroids[:2], alive)
    assert bank.empty_steps.tolist() == [0, 0, 0]
    torch.testing.assert_close(bank.centroids.norm(dim=1), torch.ones(3))


def test_reseeded_centroid_gets_assignments():
    bank, queue, keys, _ = _bank_with_dead_centroid()
    for _ in range(3):
        bank.update(keys)
    bank.reseed(queue, 3)
    # sitting on a candidate key, the centroid wins at least that key
    a = (queue @ bank.centroids.T).argmax(1)
    assert (a == 2).any()


def test_reseed_more_dead_centroids_than_candidates():
    # Every centroid dead and fewer candidates than centroids: one centroid
    # per candidate moves, the others wait, and the count says so.
    bank = _bank(n_clusters=6)
    queue = _unit(4, PROJ_DIM, seed=2)
    bank.empty_steps.fill_(10)
    before = bank.centroids.clone()
    assert bank.reseed(queue, 5) == 4
    moved = (bank.centroids != before).any(dim=1)
    assert moved.tolist() == [True] * 4 + [False] * 2
    assert bank.empty_steps.tolist() == [0, 0, 0, 0, 10, 10]
    # each moved centroid sits on a different candidate
    assert len({tuple(c.tolist()) for c in bank.centroids[:4]}) == 4
    assert ((bank.centroids[:4] @ queue.T).max(1).values > 1 - 1e-6).all()


def test_reseed_without_candidates_does_nothing():
    bank = _bank(n_clusters=3)
    bank.centroids.copy_(_unit(3, PROJ_DIM))
    before = bank.centroids.clone()
    bank.empty_steps.fill_(10)
    assert bank.reseed(torch.zeros(0, PROJ_DIM), 5) == 0
    assert torch.equal(bank.centroids, before)


def test_init_centroids_resets_state():
    keys, _, _ = _blobs()
    bank = _bank(n_clusters=3)
    bank.empty_steps.fill_(7)
    assert not bool(bank.centroids_ready)
    bank.initialise(keys)
    assert bool(bank.centroids_ready)
    assert bank.empty_steps.tolist() == [0, 0, 0]
    torch.testing.assert_close(bank.centroids.norm(dim=1), torch.ones(3))


def test_balanced_update_moves_every_centroid_when_argmax_moves_one():
    keys, _, centres = _blobs(n_blobs=3)
    # centroid 0 sits between the blobs and wins every key under argmax
    start = torch.stack([
        F.normalize(centres.sum(0), dim=0),
        F.normalize(-centres[0] + 0.1 * centres[1], dim=0),
        F.normalize(-centres[1] + 0.1 * centres[2], dim=0),
    ])
    counts = {}
    for balance in (0.0, 1.0):
        bank = _bank(n_clusters=3, balance=balance)
        bank.centroids.copy_(start)
        bank.update(keys)
        counts[balance] = bank.empty_steps.tolist()
    assert counts[0.0] == [0, 1, 1]  # arg-max: two centroids got no key
    assert counts[1.0] == [0, 0, 0]


def test_refine_centroids_reaches_the_blobs_from_poor_centroids():
    keys, labels, centres = _blobs()
    bank = _bank(n_clusters=3)
    start = F.normalize(centres + 0.7 * _unit(3, PROJ_DIM, seed=7), dim=1)
    bank.centroids.copy_(start)
    assert (bank.centroids @ centres.T).diag().min() < 0.9  # really off
    before = (keys @ bank.centroids.T).max(1).values.sum()
    out = bank.refine(keys, n_iter=10)
    assert (bank.centroids @ centres.T).diag().min() > 0.99
    assert (keys @ bank.centroids.T).max(1).values.sum() > before  # k-means objective
    assert torch.equal(out, (keys @ bank.centroids.T).argmax(1))
    assert torch.equal(out, labels)
    torch.testing.assert_close(bank.centroids.norm(dim=1), torch.ones(3))


def test_refine_centroids_zero_iterations_keeps_centroids():
    keys, _, _ = _blobs()
    bank = _bank(n_clusters=3)
    start = _unit(3, PROJ_DIM, seed=9)
    bank.centroids.copy_(start)
    labels = bank.refine(keys, n_iter=0, restarts=0)
    assert torch.equal(bank.centroids, start)
    assert torch.equal(labels, (keys @ start.T).argmax(1))


def test_refine_centroids_restart_escapes_a_local_optimum():
    keys, labels, centres = _blobs()
    q = torch.linalg.qr(torch.randn(PROJ_DIM, PROJ_DIM, generator=torch.Generator().manual_seed(0)))[0]
    side = q[3]  # orthogonal to the three blob centres
    # two centroids split blob 0, one sits between blobs 1 and 2: Lloyd stays there
    stuck = torch.stack([
        F.normalize(centres[0] + 0.3 * side, dim=0),
        F.normalize(centres[0] - 0.3 * side, dim=0),
        F.normalize(centres[1] + centres[2], dim=0),
    ])

    def score(bank):
        return (keys @ bank.centroids.T).max(1).values.sum()

    alone, restarted = _bank(n_clusters=3), _bank(n_clusters=3)
    for bank, restarts in ((alone, 0), (restarted, 1)):
        bank.centroids.copy_(stuck)
        bank.refine(keys, n_iter=20, restarts=restarts)
    assert (alone.centroids @ centres.T).max(0).values.min() < 0.9  # still stuck
    assert score(restarted) > score(alone)
    _check_covers(restarted.centroids, centres, min_cos=0.99)


# ------------------------------------------------------------------------ assignment


@pytest.mark.parametrize("bad", [-0.1, 1.5, True])
def test_balance_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError, match="balance"):
        _bank(balance=bad)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "3"])
def test_bad_overcluster_count_is_rejected(bad):
    with pytest.raises(ValueError, match="n_overclusters"):
        _bank(n_overclusters=bad)


def test_balance_zero_is_the_argmax_and_above_zero_sinkhorn():
    keys, centroids = _unit(64, PROJ_DIM, seed=1), _unit(5, PROJ_DIM, seed=2)
    assert torch.equal(_bank(5, balance=0.0).assign(keys, centroids),
                       assign_clusters(keys, centroids))
    for balance in (0.5, 1.0):
        bank = _bank(5, balance=balance, sinkhorn_iterations=4)
        assert torch.equal(bank.assign(keys, centroids),
                           sinkhorn_assign(keys, centroids, 4, balance=balance))
    # the bank's own centroids when none are given
    bank = _bank(5)
    bank.centroids.copy_(centroids)
    assert torch.equal(bank.assign(keys), assign_clusters(keys, centroids))


def _near_tie():
    """One key, two centroids one float32 step apart in similarity."""
    lo = torch.tensor(0.9553365707397461)
    hi = torch.nextafter(lo, torch.tensor(2.0))
    keys = torch.tensor([[1.0, 0.0]])
    centroids = torch.stack([torch.stack([lo, torch.tensor(0.0)]),
                             torch.stack([hi, torch.tensor(0.0)])])
    return keys, centroids


def test_balance_zero_keeps_the_argmax_where_sinkhorn_rounds_to_a_tie():
    # Sinkhorn with balance=0 is the arg-max of the similarities divided by
    # epsilon: the division can round two similarities one float32 step
    # apart to the same logit, and the tie goes to the lower index. The bank
    # takes the arg-max itself, so balance=0 is bitwise cluster_assign="argmax".
    keys, centroids = _near_tie()
    assert assign_clusters(keys, centroids).tolist() == [1]
    assert sinkhorn_assign(keys, centroids, 3, balance=0.0).tolist() == [0]
    assert _bank(2, balance=0.0).assign(keys, centroids).tolist() == [1]


def test_model_maps_argmax_and_balance_zero_to_the_same_bank():
    argmax = _model(cluster_assign="argmax", cluster_balance=1.0)
    free = _model(cluster_assign="sinkhorn", cluster_balance=0.0)
    balanced = _model(cluster_assign="sinkhorn", cluster_balance=0.5)
    assert argmax.bank.balance == free.bank.balance == 0.0
    assert balanced.bank.balance == 0.5
    keys, centroids = _near_tie()
    assert argmax.bank.assign(keys, centroids).tolist() == [1]
    assert free.bank.assign(keys, centroids).tolist() == [1]


def test_model_argmax_and_balance_zero_train_bitwise_alike():
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(12, N_FEATURES, generator=g) for _ in range(6)]
    results = []
    for params in (dict(cluster_assign="argmax"),
                   dict(cluster_assign="sinkhorn", cluster_balance=0.0)):
        model = _model(cluster_loss="proto", n_overclusters=6, **params)
        model.init_centroids(torch.cat([model.encode_key(v) for v in views]))
        optimizer = torch.optim.SGD(model.query_parameters(), lr=0.5)
        for v1, v2 in zip(views[::2], views[1::2]):
            loss, _, keys = model.training_step(v1, v2, cluster_weight=1.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.bank.update(torch.cat(keys))
            model.enqueue(torch.cat(keys))
        results.append(model.state_dict())
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key


# ------------------------------------------------------------------------ state dict


def test_state_dict_names_are_the_models_own():
    model = _model(n_overclusters=6)
    names = list(model.state_dict())
    assert names[:6] == ["centroids", "centroids_ready", "empty_steps", "overclusters",
                         "overclusters_ready", "overcluster_empty_steps"]
    assert not any(name.startswith("bank.") for name in names)
    assert [name for name, _ in model.bank.named_buffers()] == names[:6]
    # the bank on its own has the same names
    assert list(model.bank.state_dict()) == names[:6]


def test_state_dict_round_trip_restores_the_bank():
    model = _model(n_overclusters=6)
    model.init_centroids(_unit(40, PROJ_DIM, seed=4))
    model.bank.empty_steps[1] = 5
    other = _model(seed=1, n_overclusters=6)
    assert not torch.equal(other.centroids, model.centroids)
    other.load_state_dict(model.state_dict())  # strict
    for name in ("centroids", "overclusters", "empty_steps"):
        assert torch.equal(getattr(other.bank, name), getattr(model.bank, name))
    assert bool(other.centroids_ready) and other.bank.overclusters_on
    assert not other.bank.wants_overclusters


def test_wrong_shape_is_an_error_naming_the_buffer():
    state = _model(n_overclusters=6).state_dict()
    with pytest.raises(RuntimeError, match="overclusters"):
        _model(n_overclusters=3).load_state_dict(state)


def test_model_centroid_verbs_are_the_banks():
    keys = _unit(40, PROJ_DIM, seed=5)
    model = _model()
    # a bank drawing the same random numbers as the model's
    bank = CentroidBank(3, PROJ_DIM, generator=torch.Generator().set_state(
        model.generator.get_state()))
    model.init_centroids(keys)
    bank.initialise(keys)
    assert torch.equal(model.centroids, bank.centroids)
    assert torch.equal(model.refine_centroids(keys, 5), bank.refine(keys, 5))
    assert torch.equal(model.centroids, bank.centroids)

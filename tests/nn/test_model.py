"""Tests of CueCoModel: gradients, the loss against hand formulas, state updates."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skcueco.nn.losses import cluster_pull, info_nce, sinkhorn_assign
from skcueco.nn.model import CueCoModel
from skcueco.nn.queue import UNLABELLED

N_FEATURES = 12
FEATURE_DIM = 16
PROJ_DIM = 8


def _backbone():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(N_FEATURES, FEATURE_DIM), nn.BatchNorm1d(FEATURE_DIM), nn.ReLU()
    )


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    params = dict(
        projection_dim=PROJ_DIM, hidden_dim=32, queue_size=16, n_clusters=3,
        generator=torch.Generator().manual_seed(seed),
    )
    params.update(kwargs)
    return CueCoModel(_backbone(), FEATURE_DIM, **params)


def _views(n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    v1 = x + 0.1 * torch.randn(n, N_FEATURES, generator=g)
    v2 = x + 0.1 * torch.randn(n, N_FEATURES, generator=g)
    return v1, v2


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _ready_model(**kwargs):
    """A model whose centroids are initialised on its own key features."""
    model = _model(**kwargs)
    v1, v2 = _views(n=30, seed=5)
    model.init_centroids(torch.cat([model.encode_key(v1), model.encode_key(v2)]))
    return model


def _moco_hand(model, v1, v2):
    z1, z2 = model.encode_query(v1), model.encode_query(v2)
    k1, k2 = model.encode_key(v1), model.encode_key(v2)
    tau = model.temperature
    queue = model.queue.keys

    def ce(z, k):
        if queue.shape[0]:
            logits = torch.cat([(z * k).sum(1, keepdim=True), z @ queue.T], dim=1) / tau
            target = torch.zeros(z.shape[0], dtype=torch.long)
        else:
            logits = z @ k.T / tau
            target = torch.arange(z.shape[0])
        return F.cross_entropy(logits, target)

    return 0.5 * (ce(z1, k2) + ce(z2, k1)), (z1, z2, k1, k2)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("cluster_loss", ["pull", "proto"])
def test_key_network_and_centroids_never_get_gradients(cluster_loss):
    model = _ready_model(cluster_loss=cluster_loss)
    centroids = model.centroids.clone()
    queue = model.queue.keys.clone()
    ptr = model.queue.ptr.clone()
    key_before = [p.detach().clone() for p in model.key_parameters()]

    loss, parts, (k1, k2) = model.training_step(*_views(), cluster_weight=1.0)
    assert parts["clustering"] > 0
    loss.backward()

    key_params = list(model.key_parameters())
    assert len(key_params) > 0
    for p in key_params:
        assert not p.requires_grad
        assert p.grad is None
    for p, before in zip(key_params, key_before):
        torch.testing.assert_close(p.detach(), before, rtol=0, atol=0)
    for buf in (model.centroids, model.queue.keys):
        assert not buf.requires_grad
        assert buf.grad is None
    torch.testing.assert_close(model.centroids, centroids, rtol=0, atol=0)
    torch.testing.assert_close(model.queue.keys, queue, rtol=0, atol=0)
    assert int(model.queue.ptr) == int(ptr)
    assert not k1.requires_grad and not k2.requires_grad
    assert not parts["contrastive"].requires_grad
    assert not parts["clustering"].requires_grad


@pytest.mark.parametrize("cluster_weight", [0.0, 1.0])
def test_gradient_reaches_query_network(cluster_weight):
    model = _ready_model()
    loss, _, _ = model.training_step(*_views(), cluster_weight=cluster_weight)
    loss.backward()
    query_params = list(model.query_parameters())
    assert all(p.requires_grad for p in query_params)
    first_linear = model.backbone_q[1].weight
    assert first_linear.grad is not None and first_linear.grad.abs().sum() > 0
    last_linear = model.projector_q[3].weight
    assert last_linear.grad is not None and last_linear.grad.abs().sum() > 0


def test_query_parameters_are_disjoint_from_key_parameters():
    model = _model(predictor=True)
    q = {id(p) for p in model.query_parameters()}
    k = {id(p) for p in model.key_parameters()}
    assert q.isdisjoint(k)
    assert q | k == {id(p) for p in model.parameters()}


def test_clustering_term_alone_gives_query_gradient():
    # loss(lambda=1) - loss(lambda=0) is the clustering term alone: it must
    # still train the query network (centroids are constants).
    model = _ready_model()
    v1, v2 = _views()
    loss_0, _, _ = model.training_step(v1, v2, 0.0)
    loss_1, _, _ = model.training_step(v1, v2, 1.0)
    (loss_1 - loss_0).backward()
    grad = model.projector_q[3].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.centroids.grad is None


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("queue_size", [16, 0])
def test_zero_cluster_weight_is_symmetric_moco_v2(queue_size):
    model = _ready_model(queue_size=queue_size)
    v1, v2 = _views()
    expected, _ = _moco_hand(model, v1, v2)
    loss, parts, _ = model.training_step(v1, v2, cluster_weight=0.0)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(parts["contrastive"], expected.detach(), rtol=1e-6, atol=1e-6)
    assert float(parts["clustering"]) == 0.0


def test_zero_cluster_weight_does_not_need_centroids():
    # MoCo v2 baseline: centroids never initialised, loss still finite.
    model = _model()
    assert not bool(model.centroids_ready)
    v1, v2 = _views()
    expected, _ = _moco_hand(model, v1, v2)
    loss, _, _ = model.training_step(v1, v2, 0.0)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


def test_training_step_returns_keys_of_each_view():
    model = _model()
    _perturb_query(model)  # query and key networks now differ
    v1, v2 = _views()
    with torch.no_grad():
        by_key_net = F.normalize(model.projector_k(model.backbone_k(v1)), dim=1)
        by_query_net = F.normalize(model.projector_q(model.backbone_q(v1)), dim=1)
    assert not torch.allclose(by_key_net, by_query_net, atol=1e-3)
    torch.testing.assert_close(model.encode_key(v1), by_key_net)
    _, _, (k1, k2) = model.training_step(v1, v2, 0.0)
    torch.testing.assert_close(k1, model.encode_key(v1))
    torch.testing.assert_close(k2, model.encode_key(v2))
    assert k1.dtype == torch.float32


class _Recording:
    """Encoders that record their calls; ``flip`` negates the queries."""

    def __init__(self, model, flip=False):
        self.model, self.flip, self.calls = model, flip, []

    def encode_query(self, x):
        self.calls.append(("query", x))
        z = self.model.encode_query(x)
        return -z if self.flip else z

    def encode_key(self, x):
        self.calls.append(("key", x))
        return self.model.encode_key(x)


def test_training_step_encodes_with_the_given_encoders_keys_first():
    model = _ready_model()
    v1, v2 = _views()
    own = model.training_step(v1, v2, 1.0)
    recording = _Recording(model)
    given = model.training_step(v1, v2, 1.0, encoders=recording)
    assert [(kind, x is v) for (kind, x), v in zip(recording.calls, (v1, v2, v1, v2))] == [
        ("key", True), ("key", True), ("query", True), ("query", True)]
    assert torch.equal(given[0], own[0])
    assert all(torch.equal(a, b) for a, b in zip(given[2], own[2]))
    # the given encoders are what the loss sees
    flipped, _, _ = model.training_step(v1, v2, 1.0, encoders=_Recording(model, flip=True))
    z1, z2 = model.encode_query(v1), model.encode_query(v2)
    k1, k2 = model.encode_key(v1), model.encode_key(v2)
    expected, _, _ = model.loss(-z1, -z2, k1, k2, 1.0)
    torch.testing.assert_close(flipped, expected, rtol=0, atol=0)
    assert not torch.allclose(flipped, own[0])


@pytest.mark.parametrize("lam", [0.3, 2.0])
def test_pull_clustering_term_matches_hand_formula(lam):
    model = _ready_model(cluster_loss="pull")
    v1, v2 = _views()
    con, (z1, z2, k1, k2) = _moco_hand(model, v1, v2)
    M = model.centroids
    a_from_k2 = (k2 @ M.T).argmax(1)  # assignment of view 1's query: other view's key
    a_from_k1 = (k1 @ M.T).argmax(1)
    clu = 0.5 * (
        (2 - 2 * (z1 * M[a_from_k2]).sum(1)).mean()
        + (2 - 2 * (z2 * M[a_from_k1]).sum(1)).mean()
    )
    loss, parts, _ = model.training_step(v1, v2, cluster_weight=lam)
    torch.testing.assert_close(parts["contrastive"], con.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(parts["clustering"], clu.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, con + lam * clu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        loss.detach(), parts["contrastive"] + lam * parts["clustering"], rtol=1e-6, atol=1e-6
    )


def test_pull_clustering_uses_the_other_views_key():
    # Make the two views' keys assign to different centroids: the loss must use
    # the cross-view assignment, not the same-view one.
    model = _model(n_clusters=2)
    v1, v2 = _views()
    z1, z2 = model.encode_query(v1), model.encode_query(v2)
    k1, k2 = model.encode_key(v1), model.encode_key(v2)
    # centroid 0 = mean of k1, centroid 1 = mean of k2 (made distinct by
    # pushing them apart along their difference)
    d = F.normalize(k1.mean(0) - k2.mean(0), dim=0)
    model.centroids.copy_(torch.stack([d, -d]))
    model.centroids_ready.fill_(True)
    M = model.centroids
    cross = 0.5 * (
        (2 - 2 * (z1 * M[(k2 @ M.T).argmax(1)]).sum(1)).mean()
        + (2 - 2 * (z2 * M[(k1 @ M.T).argmax(1)]).sum(1)).mean()
    )
    same = 0.5 * (
        (2 - 2 * (z1 * M[(k1 @ M.T).argmax(1)]).sum(1)).mean()
        + (2 - 2 * (z2 * M[(k2 @ M.T).argmax(1)]).sum(1)).mean()
    )
    assert not torch.allclose(cross, same)  # the test can tell them apart
    _, parts, _ = model.training_step(v1, v2, 1.0)
    torch.testing.assert_close(parts["clustering"], cross.detach(), rtol=1e-6, atol=1e-6)


def test_proto_clustering_term_matches_cross_entropy():
    model = _ready_model(cluster_loss="proto", cluster_temperature=0.3)
    v1, v2 = _views()
    con, (z1, z2, k1, k2) = _moco_hand(model, v1, v2)
    M = model.centroids
    clu = 0.5 * (
        F.cross_entropy(z1 @ M.T / 0.3, (k2 @ M.T).argmax(1))
        + F.cross_entropy(z2 @ M.T / 0.3, (k1 @ M.T).argmax(1))
    )
    lam = 0.7
    loss, parts, _ = model.training_step(v1, v2, cluster_weight=lam)
    torch.testing.assert_close(parts["clustering"], clu.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, con + lam * clu, rtol=1e-6, atol=1e-6)


def test_predictor_is_applied_to_queries_only():
    model = _model(predictor=True)
    x = _views()[0]
    z = model.encode_query(x)
    expected = F.normalize(model.predictor(model.projector_q(model.backbone_q(x))), dim=1)
    torch.testing.assert_close(z, expected)
    # project() returns the projector output, without the predictor
    proj = model.project(x)
    torch.testing.assert_close(proj, F.normalize(model.projector_q(model.backbone_q(x)), dim=1))
    assert not torch.allclose(proj, z)


# ----------------------------------------------------------------------------- EMA and queue


def _perturb_query(model):
    with torch.no_grad():
        for p in model.query_parameters():
            p.add_(torch.randn_like(p))


def test_momentum_update_one_keeps_key_zero_copies_query():
    model = _model()
    _perturb_query(model)
    key_before = [p.clone() for p in model.key_parameters()]
    query = [p.detach().clone() for p in model.query_parameters()]
    assert any(not torch.equal(k, q) for k, q in zip(key_before, query))

    model.momentum_update(1.0)
    for p, before in zip(model.key_parameters(), key_before):
        assert torch.equal(p, before)

    model.momentum_update(0.0)
    for p, q in zip(model.key_parameters(), query):
        assert torch.equal(p, q)
    for p, q in zip(model.query_parameters(), query):
        assert torch.equal(p.detach(), q)  # query untouched


def test_momentum_update_is_convex_combination():
    model = _model()
    _perturb_query(model)
    k0 = [p.clone() for p in model.key_parameters()]
    q0 = [p.detach().clone() for p in model.query_parameters()]
    model.momentum_update(0.75)
    for p, k, q in zip(model.key_parameters(), k0, q0):
        torch.testing.assert_close(p, 0.75 * k + 0.25 * q)


def test_enqueue_is_fifo_with_wrap_around():
    model = _model(queue_size=8)
    a = _unit(3, PROJ_DIM, seed=10)
    b = _unit(7, PROJ_DIM, seed=11)
    model.enqueue(a)
    torch.testing.assert_close(model.queue.keys[:3], a)
    assert int(model.queue.ptr) == 3
    model.enqueue(b)
    # b fills rows 3..7 then wraps to rows 0..1
    torch.testing.assert_close(model.queue.keys[3:8], b[:5])
    torch.testing.assert_close(model.queue.keys[0:2], b[5:])
    torch.testing.assert_close(model.queue.keys[2], a[2])
    assert int(model.queue.ptr) == 2
    # oldest to newest: a[2], then all of b
    torch.testing.assert_close(model.queue.ordered(), torch.cat([a[2:], b]))


def test_queued_keys_become_the_negatives():
    model = _model(queue_size=4)
    keys = _unit(4, PROJ_DIM, seed=3)
    model.enqueue(keys)
    torch.testing.assert_close(model.queue.keys, keys)
    v1, v2 = _views()
    expected, _ = _moco_hand(model, v1, v2)  # uses model.queue.keys == keys
    loss, _, _ = model.training_step(v1, v2, 0.0)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


def test_enqueue_with_zero_queue_is_noop():
    model = _model(queue_size=0)
    model.enqueue(_unit(5, PROJ_DIM))
    assert model.queue.keys.shape == (0, PROJ_DIM)


# ----------------------------------------------------------------------------- centroids
# (the bank itself: tests/nn/test_centroids.py)


def test_cluster_assign_must_be_known():
    with pytest.raises(ValueError, match="cluster_assign"):
        _model(cluster_assign="greedy")



def test_sinkhorn_pull_targets_are_the_balanced_assignments():
    model = _ready_model(cluster_assign="sinkhorn")
    v1, v2 = _views(n=12)
    z1, z2 = model.encode_query(v1), model.encode_query(v2)
    k1, k2 = model.encode_key(v1), model.encode_key(v2)
    c = model.centroids
    a2, a1 = sinkhorn_assign(k2, c, 3), sinkhorn_assign(k1, c, 3)
    expected = 0.5 * (cluster_pull(z1, c, a2) + cluster_pull(z2, c, a1))
    _, parts, _ = model.loss(z1, z2, k1, k2, cluster_weight=1.0)
    assert parts["clustering"].item() == pytest.approx(expected.item(), rel=1e-5)



# ----------------------------------------------------------------------------- inference


def test_project_and_predict_clusters_shapes():
    model = _ready_model(n_clusters=4)
    model.eval()
    x = _views(n=7)[0]
    proj = model.project(x)
    assert proj.shape == (7, PROJ_DIM)
    assert proj.dtype == torch.float32
    assert not proj.requires_grad
    torch.testing.assert_close(proj.norm(dim=1), torch.ones(7))
    labels = model.predict_clusters(x)
    assert labels.shape == (7,)
    assert labels.dtype == torch.long
    assert labels.min() >= 0 and labels.max() < 4
    assert torch.equal(labels, (proj @ model.centroids.T).argmax(1))
    feats = model(x)
    assert feats.shape == (7, FEATURE_DIM)


# ----------------------------------------------------------------------------- same-cluster negatives


@pytest.mark.parametrize("queue_size", [16, 0])
def test_dropping_cluster_negatives_without_the_clustering_term_is_moco_v2(queue_size):
    model = _ready_model(queue_size=queue_size)
    v1, v2 = _views()
    expected, _ = _moco_hand(model, v1, v2)
    loss, _, _ = model.training_step(v1, v2, 0.0, drop_cluster_negatives=True)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


def test_dropped_cluster_negatives_are_those_the_clustering_term_assigns_the_query():
    model = _ready_model(cluster_loss="proto")
    v1, v2 = _views()
    kept, kept_parts, _ = model.training_step(v1, v2, 1.0)
    model.label_queue()
    loss, parts, _ = model.training_step(v1, v2, 1.0, drop_cluster_negatives=True)
    # the clustering term is the same; the contrastive term is InfoNCE of each
    # query against the queue keys of clusters other than its positive key's
    torch.testing.assert_close(parts["clustering"], kept_parts["clustering"])
    z1, z2 = model.encode_query(v1), model.encode_query(v2)
    k1, k2 = model.encode_key(v1), model.encode_key(v2)
    queue = model.queue.keys
    queue_labels = model.bank.assign_main(queue)
    torch.testing.assert_close(model.queue.labels, queue_labels, rtol=0, atol=0)

    def hand(z, k):
        a = model.bank.assign_main(k)
        return sum(info_nce(z[i:i + 1], k[i:i + 1], queue[queue_labels != a[i]],
                            model.temperature) for i in range(z.shape[0])) / z.shape[0]

    expected = 0.5 * (hand(z1, k2) + hand(z2, k1))
    torch.testing.assert_close(parts["contrastive"], expected.detach(), rtol=1e-5, atol=1e-6)
    # the chance value: log(1 + the negatives each query keeps), against the
    # whole queue's log(1 + 16) when every key is a negative
    assert kept_parts["contrastive_chance"].item() == pytest.approx(math.log(17))

    def chance(k):
        a = model.bank.assign_main(k)
        return torch.log1p((queue_labels[None, :] != a[:, None]).sum(1).float()).mean()

    torch.testing.assert_close(parts["contrastive_chance"], 0.5 * (chance(k2) + chance(k1)))
    assert parts["contrastive_chance"] < kept_parts["contrastive_chance"]
    # with 3 clusters some of the 16 queue keys share a query's cluster: a
    # query has fewer negatives, so a lower loss
    assert float(parts["contrastive"]) < float(kept_parts["contrastive"])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.query_parameters()
               if p.grad is not None)


def test_unlabelled_queue_keys_are_never_dropped():
    # keys queued without a cluster (UNLABELLED) stay negatives of every query
    model = _ready_model()
    v1, v2 = _views()
    assert (model.queue.labels == UNLABELLED).all()
    kept, _, _ = model.training_step(v1, v2, 1.0)
    dropped, _, _ = model.training_step(v1, v2, 1.0, drop_cluster_negatives=True)
    torch.testing.assert_close(dropped, kept, rtol=0, atol=0)


def test_the_steps_labels_are_the_clusters_the_other_views_queries_are_pulled_towards():
    model = _ready_model()
    v1, v2 = _views()
    _, _, (k1, k2) = model.training_step(v1, v2, 1.0)
    l1, l2 = model.step_labels
    torch.testing.assert_close(l1, model.bank.assign_main(k1), rtol=0, atol=0)
    torch.testing.assert_close(l2, model.bank.assign_main(k2), rtol=0, atol=0)
    model.enqueue(k1, l1)
    torch.testing.assert_close(model.queue.labels[:k1.shape[0]], l1, rtol=0, atol=0)
    # without the clustering term there are no clusters to store
    model.training_step(v1, v2, 0.0)
    assert model.step_labels is None


# ----------------------------------------------------------------------------- neighbours as positives


def test_neighbour_positives_are_the_nearest_queue_keys_of_the_querys_cluster():
    model = _ready_model(cluster_loss="proto")
    v1, v2 = _views()
    model.label_queue()
    dropped, dropped_parts, _ = model.training_step(v1, v2, 1.0, drop_cluster_negatives=True)
    loss, parts, _ = model.training_step(v1, v2, 1.0, drop_cluster_negatives=True,
                                         neighbour_positives=True)
    # the clustering term still pulls each query towards its own key's cluster
    torch.testing.assert_close(parts["clustering"], dropped_parts["clustering"], rtol=0, atol=0)
    z1, z2 = model.encode_query(v1), model.encode_query(v2)
    k1, k2 = model.encode_key(v1), model.encode_key(v2)
    queue, queue_labels = model.queue.keys, model.queue.labels
    swapped = 0

    def hand(z, k):
        nonlocal swapped
        a = model.bank.assign_main(k)
        total = 0.0
        for i in range(z.shape[0]):
            j = int((queue @ k[i]).argmax())
            positive = k[i:i + 1]
            if queue_labels[j] == a[i]:
                positive, swapped = queue[j:j + 1], swapped + 1
            total = total + info_nce(z[i:i + 1], positive, queue[queue_labels != a[i]],
                                     model.temperature)
        return total / z.shape[0]

    expected = 0.5 * (hand(z1, k2) + hand(z2, k1))
    torch.testing.assert_close(parts["contrastive"], expected.detach(), rtol=1e-5, atol=1e-6)
    # some positives were swapped for a queued neighbour, so the loss moved
    assert swapped > 0
    assert float(parts["contrastive"]) != float(dropped_parts["contrastive"])
    torch.testing.assert_close(parts["contrastive_chance"], dropped_parts["contrastive_chance"])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.query_parameters()
               if p.grad is not None)


def test_neighbour_positives_need_queue_clusters():
    # without the negatives left out, or with a queue of unlabelled keys, a
    # query's positive stays the key of its other view
    model = _ready_model()
    v1, v2 = _views()
    plain, _, _ = model.training_step(v1, v2, 1.0)
    kept, _, _ = model.training_step(v1, v2, 1.0, neighbour_positives=True)
    torch.testing.assert_close(kept, plain, rtol=0, atol=0)
    assert (model.queue.labels == UNLABELLED).all()
    unlabelled, _, _ = model.training_step(v1, v2, 1.0, drop_cluster_negatives=True,
                                           neighbour_positives=True)
    torch.testing.assert_close(unlabelled, plain, rtol=0, atol=0)
    # in-batch negatives (queue_size=0) have no stored keys to take from
    batch = _ready_model(queue_size=0)
    alone, _, _ = batch.training_step(v1, v2, 1.0, drop_cluster_negatives=True)
    with_flag, _, _ = batch.training_step(v1, v2, 1.0, drop_cluster_negatives=True,
                                          neighbour_positives=True)
    torch.testing.assert_close(with_flag, alone, rtol=0, atol=0)

"""Tests of the pure-PyTorch building blocks in skcueco.nn."""

import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score
from torch import nn

from skcueco.nn import (
    KeyQueue,
    MomentumSchedule,
    PredictionHead,
    ProjectionHead,
    assign_clusters,
    cluster_pull,
    cosine_momentum,
    ema_update,
    info_nce,
    proto_nce,
    spherical_kmeans,
)
from skcueco.nn.kmeans import _kmeans_plusplus, _lloyd_step
from skcueco.nn.queue import UNLABELLED
from skcueco.nn import losses
from skcueco.nn.losses import sinkhorn_assign


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("n_negatives", [1, 7, 4096, 65536])
def test_info_nce_equal_similarities_is_log_one_plus_k(n_negatives):
    # Identical unit vectors everywhere: every logit equals 1 / tau.
    v = _unit(1, 16)
    q = v.expand(5, 16)
    loss = info_nce(q, q, negatives=v.expand(n_negatives, 16), temperature=0.2)
    assert loss.item() == pytest.approx(math.log(1 + n_negatives), rel=1e-5)


def test_info_nce_in_batch_equal_similarities_is_log_n():
    v = _unit(1, 8).expand(6, 8)
    assert info_nce(v, v).item() == pytest.approx(math.log(6), rel=1e-5)
    # An empty queue falls back to in-batch negatives rather than loss 0.
    empty = torch.empty(0, 8)
    assert info_nce(v, v, negatives=empty).item() == pytest.approx(math.log(6), rel=1e-5)


def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])
    tau = 0.5
    expected = 0.0

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    for qi, ki in zip(q.tolist(), k.tolist()):
        pos = math.exp(dot(qi, ki) / tau)
        negs = sum(math.exp(dot(qi, nj) / tau) for nj in neg.tolist())
        expected += -math.log(pos / (pos + negs)) / 2
    assert info_nce(q, k, neg, temperature=tau).item() == pytest.approx(expected, rel=1e-6)

    # In-batch: row i's negatives are the other keys of the batch.
    logits = [[dot(qi, kj) / tau for kj in k.tolist()] for qi in q.tolist()]
    expected_ib = sum(
        -logits[i][i] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(2)
    ) / 2
    assert info_nce(q, k, temperature=tau).item() == pytest.approx(expected_ib, rel=1e-6)


@pytest.mark.parametrize("n_negatives", [3, 4096])
def test_info_nce_queue_matches_concatenated_cross_entropy(n_negatives):
    # The cross-entropy over [l_pos | l_neg] / tau with target column 0 is
    # the textbook form; the fused form must give the same loss and gradient.
    q = _unit(9, 16, seed=5).requires_grad_()
    k = _unit(9, 16, seed=6)
    neg = _unit(n_negatives, 16, seed=7)
    tau = 0.07
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.T], dim=1) / tau
    expected = F.cross_entropy(logits, torch.zeros(9, dtype=torch.long))
    (expected_grad,) = torch.autograd.grad(expected, q)
    loss = info_nce(q, k, neg, temperature=tau)
    (grad,) = torch.autograd.grad(loss, q)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_info_nce_gradient_reaches_query_only_with_detached_keys():
    q = _unit(4, 8, seed=1).requires_grad_()
    k = _unit(4, 8, seed=2).requires_grad_()
    neg = _unit(10, 8, seed=3).requires_grad_()
    info_nce(q, k.detach(), neg.detach()).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and neg.grad is None
    # Without detaching, keys do receive gradient: the check above is meaningful.
    info_nce(q, k, neg).backward()
    assert k.grad.abs().sum() > 0 and neg.grad.abs().sum() > 0


def test_info_nce_bf16_inputs_give_float32_loss():
    q = _unit(4, 8).bfloat16()
    assert info_nce(q, q, q).dtype == torch.float32


def test_cluster_pull_is_mean_squared_distance():
    q = _unit(12, 6, seed=4).requires_grad_()
    centroids = _unit(3, 6, seed=5)
    a = torch.tensor([0, 1, 2] * 4)
    expected = ((q - centroids[a]) ** 2).sum(dim=1).mean()
    loss = cluster_pull(q, centroids, a)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert cluster_pull(centroids, centroids, torch.arange(3)).item() == pytest.approx(0, abs=1e-6)
    loss.backward()
    assert q.grad.abs().sum() > 0


def test_proto_nce_matches_cross_entropy_hand_form():
    q = _unit(9, 5, seed=6)
    centroids = _unit(4, 5, seed=7)
    a = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    logits = q @ centroids.T / 0.1
    expected = (-logits[torch.arange(9), a] + logits.exp().sum(dim=1).log()).mean()
    assert proto_nce(q, centroids, a).item() == pytest.approx(expected.item(), rel=1e-5)
    assert proto_nce(q, centroids, a, temperature=0.5).item() != pytest.approx(expected.item())


def test_assign_clusters_picks_most_similar_centroid():
    centroids = torch.eye(3)
    keys = F.normalize(torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.2, 0.7], [1.0, 0.1, 0.1]]), dim=1)
    labels = assign_clusters(keys, centroids)
    assert labels.dtype == torch.long
    assert labels.tolist() == [1, 2, 0]


def test_sinkhorn_assign_balances_a_batch_argmax_gives_to_one_centroid():
    # every key is closest to centroid 0, but the keys differ along the others
    centroids = torch.eye(4)
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(
        torch.cat([torch.full((40, 1), 3.0), torch.rand(40, 3, generator=g)], dim=1), dim=1
    )
    assert assign_clusters(keys, centroids).tolist() == [0] * 40
    counts = torch.bincount(sinkhorn_assign(keys, centroids, n_iter=3), minlength=4)
    assert counts.min() >= 5, counts  # no centroid left out ...
    assert counts.max() <= 20, counts  # ... and none takes most of the batch


def test_sinkhorn_assign_keeps_clear_balanced_assignments_and_zero_iterations_is_argmax():
    centres = torch.eye(6)[:3]
    g = torch.Generator().manual_seed(1)
    keys = F.normalize(
        centres.repeat_interleave(20, 0) + 0.05 * torch.randn(60, 6, generator=g), dim=1
    )
    truth = torch.arange(3).repeat_interleave(20)
    assert torch.equal(sinkhorn_assign(keys, centres), truth)
    skewed = _unit(30, 6, seed=3)
    assert torch.equal(sinkhorn_assign(skewed, centres, n_iter=0),
                       assign_clusters(skewed, centres))
    assert sinkhorn_assign(keys.bfloat16(), centres).dtype == torch.long


def test_relaxed_sinkhorn_lets_unequal_groups_keep_their_size():
    # groups of 60, 30 and 10 keys: the equipartition moves keys of the large
    # group to the small ones; the relaxed step keeps more of them in place
    centres = torch.eye(6)[:3]
    truth = torch.arange(3).repeat_interleave(torch.tensor([60, 30, 10]))
    g = torch.Generator().manual_seed(1)
    torch.randn(100, 6, generator=g)  # the draws of two noisier levels before
    torch.randn(100, 6, generator=g)
    keys = F.normalize(centres[truth] + 0.3 * torch.randn(100, 6, generator=g), dim=1)
    strict = sinkhorn_assign(keys, centres, balance=1.0)
    relaxed = sinkhorn_assign(keys, centres, balance=0.5)
    assert (relaxed == truth).sum() > (strict == truth).sum()
    assert torch.bincount(relaxed, minlength=3)[0] > torch.bincount(strict, minlength=3)[0]
    assert torch.equal(sinkhorn_assign(keys, centres), strict)  # 1.0 is the default


def test_sinkhorn_balance_moves_between_equipartition_and_argmax():
    # every key is closest to centroid 0: the largest share grows as balance falls
    centroids = torch.eye(4)
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(
        torch.cat([torch.full((40, 1), 3.0), torch.rand(40, 3, generator=g)], dim=1), dim=1
    )
    largest = [torch.bincount(sinkhorn_assign(keys, centroids, balance=b), minlength=4).max()
               for b in (1.0, 0.75, 0.5)]
    assert largest[0] <= 20 and largest == sorted(largest) and largest[2] < 40
    skewed = _unit(30, 4, seed=3)
    assert torch.equal(sinkhorn_assign(skewed, centroids, balance=0.0),
                       assign_clusters(skewed, centroids))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="balance"):
            sinkhorn_assign(keys, centroids, balance=bad)


# ------------------------------------------------------------------------------ queue


@pytest.mark.parametrize("batch_size", [3, 7, 10, 25])
def test_queue_matches_deque_reference(batch_size):
    size, dim = 10, 4
    queue = KeyQueue(size, dim, generator=torch.Generator().manual_seed(0))
    reference = deque(queue.keys.clone(), maxlen=size)  # oldest -> newest
    label_reference = deque([UNLABELLED] * size, maxlen=size)
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(size))
    counter = 0
    for step in range(6):
        batch = torch.arange(counter, counter + batch_size, dtype=torch.float32)
        batch = batch[:, None].expand(batch_size, dim)
        # every other batch comes with labels (its key values), the others without
        labels = batch[:, 0].long() if step % 2 else None
        counter += batch_size
        queue.enqueue(batch, labels)
        reference.extend(batch)
        label_reference.extend([UNLABELLED] * batch_size if labels is None else labels.tolist())
        assert int(queue.ptr) == counter % size
        torch.testing.assert_close(queue.ordered(), torch.stack(list(reference)))
        order = (queue.ptr + torch.arange(size)) % size
        assert queue.labels[order].tolist() == list(label_reference)
        # Ring layout: slot j holds the key written there most recently.
        if counter >= size:
            slots = [max(c for c in range(counter) if c % size == j) for j in range(size)]
            assert queue.keys[:, 0].tolist() == [float(s) for s in slots]


def test_queue_size_zero_and_shape_errors():
    queue = KeyQueue(0, 5)
    queue.enqueue(torch.ones(4, 5))
    assert queue.keys.shape == (0, 5) and int(queue.ptr) == 0 and len(queue) == 0
    with pytest.raises(ValueError):
        KeyQueue(4, 5).enqueue(torch.ones(2, 3))
    with pytest.raises(ValueError):
        KeyQueue(-1, 5)
    with pytest.raises(ValueError, match="labels"):
        KeyQueue(4, 5).enqueue(torch.ones(2, 5), torch.zeros(3, dtype=torch.long))


def test_queue_state_dict_round_trip_and_seed():
    a = KeyQueue(8, 3, generator=torch.Generator().manual_seed(1))
    a.enqueue(_unit(5, 3, seed=9))
    b = KeyQueue(8, 3, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a.keys, b.keys)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.keys, a.keys)
    assert int(b.ptr) == 5
    # Continuing after the reload behaves as the original queue.
    new = _unit(6, 3, seed=10)
    a.enqueue(new)
    b.enqueue(new)
    torch.testing.assert_close(b.keys, a.keys)
    assert int(b.ptr) == int(a.ptr) == 3
    same = KeyQueue(8, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(same.keys, KeyQueue(8, 3, torch.Generator().manual_seed(1)).keys)


def test_queue_labels_round_trip_and_states_without_them_load_unlabelled():
    a = KeyQueue(8, 3, generator=torch.Generator().manual_seed(1))
    a.enqueue(_unit(5, 3, seed=9), torch.tensor([0, 1, 2, 1, 0]))
    b = KeyQueue(8, 3, generator=torch.Generator().manual_seed(2))
    b.load_state_dict(a.state_dict())
    assert b.labels.tolist() == [0, 1, 2, 1, 0] + [UNLABELLED] * 3
    # a state written before the queue stored labels
    old = {k: v for k, v in a.state_dict().items() if k != "labels"}
    b.load_state_dict(old)
    torch.testing.assert_close(b.keys, a.keys)
    assert (b.labels == UNLABELLED).all()


# --------------------------------------------------------------------------- momentum


def _net(seed):
    torch.manual_seed(seed)  # test-only: seeds parameter init of the two copies
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


@pytest.mark.parametrize("m", [1.0, 0.0, 0.5, 0.9])
def test_ema_update(m):
    target, source = _net(0), _net(1)
    target[1].running_mean.fill_(7.0)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, source, m)
    for p_t, p_0, p_s in zip(target.parameters(), before, source.parameters()):
        torch.testing.assert_close(p_t, m * p_0 + (1 - m) * p_s)
        if m == 0.0:
            assert torch.equal(p_t, p_s)
        if m == 1.0:
            assert torch.equal(p_t, p_0)
    # Buffers keep the key network's own statistics.
    assert torch.equal(target[1].running_mean, torch.full((4,), 7.0))
    assert torch.equal(source[1].running_mean, torch.zeros(4))


def test_ema_update_rejects_bad_input():
    with pytest.raises(ValueError):
        ema_update(_net(0), _net(1), 1.5)
    with pytest.raises(ValueError):
        ema_update(_net(0), nn.Linear(3, 4), 0.5)


def test_cosine_momentum_endpoints_and_monotone():
    total = 50
    values = [cosine_momentum(s, total, base=0.99) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.99)
    assert values[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(values, values[1:]))
    assert cosine_momentum(total + 10, total) == pytest.approx(1.0)
    schedule = MomentumSchedule(total, base=0.9)
    assert schedule(0) == pytest.approx(0.9) and schedule(total) == pytest.approx(1.0)
    assert schedule(total // 2) == pytest.approx(0.95)


# ---------------------------------------------------------------------------- k-means


def _blobs(seed=0, per_cluster=50):
    g = torch.Generator().manual_seed(seed)
    directions = torch.eye(8)[:4] * 5  # 4 orthogonal directions
    labels = torch.arange(4).repeat_interleave(per_cluster)
    x = directions[labels] + 0.3 * torch.randn(len(labels), 8, generator=g)
    # Varying norms must not matter: only directions are clustered.
    x = x * torch.rand(len(labels), 1, generator=g).add(0.5)
    return x, labels


def test_spherical_kmeans_recovers_blob_directions():
    x, truth = _blobs()
    centroids, labels = spherical_kmeans(x, 4, generator=torch.Generator().manual_seed(0))
    assert centroids.shape == (4, 8) and labels.shape == (200,) and labels.dtype == torch.long
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(4))
    assert adjusted_rand_score(truth.numpy(), labels.numpy()) == 1.0
    # Each centroid points along one blob direction.
    assert sorted(centroids[:, :4].argmax(dim=1).tolist()) == [0, 1, 2, 3]
    assert (centroids[:, :4].max(dim=1).values > 0.95).all()


def test_spherical_kmeans_deterministic_per_seed():
    x = _unit(300, 16, seed=3)

    def run(seed):
        return spherical_kmeans(x, 6, generator=torch.Generator().manual_seed(seed))

    c1, l1 = run(0)
    c2, l2 = run(0)
    assert torch.equal(c1, c2) and torch.equal(l1, l2)
    c3, _ = run(1)
    assert not torch.equal(c1, c3)


def test_spherical_kmeans_uses_directions_only():
    # A long and a short vector weigh the same: the centroid is their bisector.
    x = torch.tensor([[100.0, 0.0], [0.0, 0.5]])
    centroids, labels = spherical_kmeans(x, 1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(centroids, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    assert labels.tolist() == [0, 0]


def test_lloyd_step_reseeds_empty_cluster_at_farthest_point():
    x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.6, 1.0]]), dim=1)
    # The third centroid faces away from every point, so its cluster is empty.
    centroids = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    new = _lloyd_step(x, centroids)
    # x[3] is the worst-fit point (lowest similarity to its own centroid).
    torch.testing.assert_close(new[2], x[3])
    torch.testing.assert_close(new[0], F.normalize(x[0] + x[1], dim=0))


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_plusplus_never_picks_a_point_of_zero_weight(seed):
    # 99 copies of one direction and a single other one: once a copy is
    # chosen, every other copy has weight 0 and the lone point must follow.
    x = torch.cat([torch.eye(4)[:1].expand(99, 4), torch.eye(4)[1:2]])
    centroids = _kmeans_plusplus(x, 2, torch.Generator().manual_seed(seed))
    assert sorted(centroids.argmax(dim=1).tolist()) == [0, 1]


def test_spherical_kmeans_edge_cases():
    x = _unit(5, 3)
    with pytest.raises(ValueError, match="n_clusters"):
        spherical_kmeans(x, 6)
    # K = N with duplicated points: every centroid still a unit vector.
    dup = torch.cat([x[:2], x[:2], x[:1]])
    centroids, labels = spherical_kmeans(dup, 5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(centroids).all()
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(5))
    assert labels.max() < 5


# ------------------------------------------------------------------------------ heads


def test_heads_output_shapes():
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    proj = ProjectionHead(32, hidden_dim=64, out_dim=16)
    assert proj(x).shape == (6, 16)
    assert [type(m) for m in proj] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    pred = PredictionHead(16, hidden_dim=8)
    assert pred(proj(x)).shape == (6, 16) and pred[0].out_features == 8
    assert ProjectionHead(32)(x).shape == (6, 128)
    with pytest.raises(ValueError):
        ProjectionHead(0)


@pytest.mark.parametrize("n, k, chunk", [(9, 3, 1 << 20), (9, 100, 7), (5, 64, 64), (1, 33, 8)])
def test_queue_logsumexp_matches_autograd_through_the_whole_block(n, k, chunk, monkeypatch):
    # the chunked function, its query and negative gradients, against the
    # plain (N, K) computation, for chunks that do and do not divide K
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk * n)
    q = (_unit(n, 16, seed=1) / 0.1).requires_grad_()
    neg = _unit(k, 16, seed=2).requires_grad_()
    weights = torch.rand(n, generator=torch.Generator().manual_seed(3))
    expected = torch.logsumexp(q @ neg.T, dim=1)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, neg))
    got = losses.queue_logsumexp(q, neg)
    grads = torch.autograd.grad((got * weights).sum(), (q, neg))
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_losses_compute_in_float32_inside_autocast():
    # autocast would run the similarity matmuls in bf16; the losses opt out
    q = _unit(32, 16, seed=1).requires_grad_()
    k, neg, centroids = _unit(32, 16, seed=2), _unit(500, 16, seed=3), _unit(6, 16, seed=4)
    labels = torch.arange(32) % 6
    plain = [info_nce(q, k, neg, 0.1), info_nce(q, k, None, 0.1),
             proto_nce(q, centroids, labels), sinkhorn_assign(k, centroids)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = [info_nce(q, k, neg, 0.1), info_nce(q, k, None, 0.1),
                  proto_nce(q, centroids, labels), sinkhorn_assign(k, centroids)]
        assert (q @ neg.T).dtype == torch.bfloat16  # autocast is on here
    for a, b in zip(plain, inside):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- negatives left out


@pytest.mark.parametrize("chunk", [1 << 20, 3])
def test_info_nce_leaves_out_the_negatives_of_the_query_label(chunk, monkeypatch):
    # the loss and gradient of each query equal InfoNCE against only the
    # negatives whose label differs from its own, chunked or not
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk * 5)
    q = _unit(5, 8, seed=1).requires_grad_()
    k = _unit(5, 8, seed=2)
    queue = _unit(9, 8, seed=3)
    q_labels = torch.tensor([0, 1, 2, 0, 3])
    n_labels = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 1])
    got = info_nce(q, k, queue, 0.2, query_labels=q_labels, negative_labels=n_labels)
    (grad,) = torch.autograd.grad(got, q)
    expected = sum(info_nce(q[i:i + 1], k[i:i + 1], queue[n_labels != q_labels[i]], 0.2)
                   for i in range(5)) / 5
    (expected_grad,) = torch.autograd.grad(expected, q)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, expected_grad)
    # a label no negative has (3) leaves every negative in
    torch.testing.assert_close(
        info_nce(q[4:], k[4:], queue, 0.2, query_labels=q_labels[4:], negative_labels=n_labels),
        info_nce(q[4:], k[4:], queue, 0.2))
    # without labels nothing changes
    torch.testing.assert_close(info_nce(q, k, queue, 0.2, query_labels=q_labels),
                               info_nce(q, k, queue, 0.2))


def test_info_nce_with_every_negative_left_out_is_finite():
    q = _unit(4, 8, seed=1).requires_grad_()
    k = _unit(4, 8, seed=2)
    same = torch.zeros(4, dtype=torch.long)
    loss = info_nce(q, k, _unit(6, 8, seed=3), 0.2, query_labels=same,
                    negative_labels=torch.zeros(6, dtype=torch.long))
    (grad,) = torch.autograd.grad(loss, q)
    assert float(loss.detach()) == 0.0  # only the positive is left: nothing to tell apart
    assert torch.isfinite(grad).all()


def test_info_nce_in_batch_leaves_out_the_other_keys_of_the_query_label():
    q = _unit(6, 8, seed=1)
    k = _unit(6, 8, seed=2)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got = info_nce(q, k, None, 0.5, query_labels=labels)
    logits = q @ k.T / 0.5
    expected = torch.stack([
        torch.logsumexp(logits[i][(labels != labels[i]) | (torch.arange(6) == i)], 0) - logits[i, i]
        for i in range(6)]).mean()
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, info_nce(q, k, None, 0.5))

"""The clusters predict gives: read from the neighbourhood graph of the training set."""

import warnings

import numpy as np
import pytest
import scipy.sparse
import torch
from numpy.testing import assert_array_equal
from sklearn.metrics import normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

from skcueco import CueCoEmbedder
from skcueco._readout import (
    candidate_partitions, graph_clusters, knn_graph, modularity, readout,
)
from skcueco.nn.vote import VOTE_NEIGHBOURS, vote_clusters


def _unit(A):
    return A / np.linalg.norm(A, axis=1, keepdims=True)


def _arcs(n_per_arc=150, seed=0):
    """Two interleaved arcs on the unit circle's plane, lifted to 3-D unit vectors.

    Each arc is a long thin group: its mean direction lies closer to the other
    arc's points than to its own ends, so one centroid per group mixes them,
    while every point's neighbours are on its own arc.
    """
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n_per_arc)
    a = np.stack([np.cos(t), np.sin(t)], 1)
    b = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
    X = np.concatenate([a, b]) + rng.normal(scale=0.04, size=(2 * n_per_arc, 2))
    X = np.concatenate([X, np.full((len(X), 1), 1.5)], axis=1)
    return _unit(X).astype(np.float32), np.repeat([0, 1], n_per_arc)


def test_knn_graph_links_each_row_to_its_nearest_rows():
    Z = torch.from_numpy(_unit(np.random.default_rng(0).normal(size=(60, 5))).astype(np.float32))
    A = knn_graph(Z, 4)
    expected = NearestNeighbors(n_neighbors=4, metric="cosine").fit(Z.numpy()).kneighbors_graph(
        Z.numpy(), mode="connectivity")
    assert_array_equal(A.toarray(), 0.5 * (expected + expected.T).toarray())


def test_knn_graph_in_chunks_is_the_same_graph(monkeypatch):
    import skcueco._readout as module

    Z = torch.from_numpy(_unit(np.random.default_rng(1).normal(size=(50, 4))).astype(np.float32))
    whole = knn_graph(Z, 5).toarray()
    monkeypatch.setattr(module, "KNN_CHUNK_VALUES", 7 * 50)  # 7 rows at a time
    assert_array_equal(knn_graph(Z, 5).toarray(), whole)


def test_graph_clusters_follow_groups_a_centroid_per_group_mixes():
    Z, y = _arcs()
    labels = graph_clusters(torch.from_numpy(Z), 2, 10, seed=0)
    assert normalized_mutual_info_score(y, labels) > 0.95
    # nearest of two centroids (the groups' own means) mixes the arcs
    means = _unit(np.stack([Z[y == c].mean(0) for c in (0, 1)]))
    assert normalized_mutual_info_score(y, (Z @ means.T).argmax(1)) < 0.8


def test_readout_prototypes_are_the_rows_read_with_their_graph_clusters():
    Z, y = _arcs()
    P = torch.from_numpy(Z)
    centroids = torch.from_numpy(_unit(np.eye(2, 3)).astype(np.float32))
    centers, prototypes, owners = readout(P, centroids, 10, seed=0)
    assert centers.shape == (2, 3) and torch.equal(prototypes, P)
    assert owners.dtype == torch.int64
    assert_array_equal(owners.numpy(), graph_clusters(P, 2, 10, seed=0))
    np.testing.assert_allclose(centers.norm(dim=1), 1, rtol=1e-6)
    # each center is its cluster's mean direction
    for c in (0, 1):
        mean = Z[owners.numpy() == c].mean(0)
        np.testing.assert_allclose(centers[c].numpy(), mean / np.linalg.norm(mean), rtol=1e-5)
    pred = vote_clusters(P, prototypes, owners, 2, VOTE_NEIGHBOURS).numpy()
    assert normalized_mutual_info_score(y, pred) > 0.9
    # deterministic for a seed
    again = readout(P, centroids, 10, seed=0)
    for a, b in zip((centers, prototypes, owners), again):
        assert torch.equal(a, b)


def test_a_cluster_the_graph_leaves_empty_keeps_its_centroid(monkeypatch):
    import skcueco._readout as module

    Z, _ = _arcs(30)
    monkeypatch.setattr(module, "graph_clusters", lambda P, n, k, seed: np.zeros(len(P), int))
    centroids = torch.from_numpy(_unit(np.eye(3)).astype(np.float32))
    centers, prototypes, owners = readout(torch.from_numpy(Z), centroids, 5, seed=0)
    assert torch.equal(centers[1:], centroids[1:])
    assert not torch.equal(centers[0], centroids[0])
    assert set(owners.tolist()) == {0}


@pytest.fixture(scope="module")
def digits_fits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X[:600]
    # centroid targets: with graph targets the graph shapes the training too
    params = dict(max_epochs=4, batch_size=64, n_clusters=10, random_state=0, amp=False,
                  hidden_dim=128, cluster_targets="centroids")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = CueCoEmbedder(**params).fit(X)
        plain = CueCoEmbedder(**params, cluster_graph=0).fit(X)
    return X, y[:600], graph, plain


def test_the_graph_changes_only_the_clusters(digits_fits):
    X, _, graph, plain = digits_fits
    # the read-out comes after training: same embeddings, same training state
    assert_array_equal(graph.transform(X), plain.transform(X))
    # the prototypes are the training projections read, with their clusters
    assert_array_equal(graph.cluster_prototypes_, graph._trained.project(*graph._rows(X)))
    assert sorted(set(graph.cluster_prototype_labels_)) == list(range(10))
    assert graph._trained.prototype_votes == VOTE_NEIGHBOURS
    # without the graph the centroids are the prototypes
    assert_array_equal(plain.cluster_prototypes_, plain.cluster_centers_)
    assert_array_equal(plain.cluster_prototype_labels_, np.arange(10))
    z = plain._trained.project(*plain._rows(X))
    assert_array_equal(plain.predict(X), (z @ plain.cluster_centers_.T).argmax(1))


def test_the_graph_clusters_digits_better_than_the_centroids(digits_fits):
    X, y, graph, plain = digits_fits
    assert (normalized_mutual_info_score(y, graph.predict(X))
            > normalized_mutual_info_score(y, plain.predict(X)))


def test_prototypes_survive_save_and_load(digits_fits, tmp_path):
    X, _, graph, _ = digits_fits
    graph.save(tmp_path / "m.pt", training_state=False)
    loaded = CueCoEmbedder.load(tmp_path / "m.pt")
    assert_array_equal(loaded.cluster_prototypes_, graph.cluster_prototypes_)
    assert loaded._trained.prototype_votes == VOTE_NEIGHBOURS
    assert_array_equal(loaded.predict(X), graph.predict(X))


def test_predict_is_the_weighted_vote_of_the_nearest_prototypes(digits_fits):
    X, _, graph, _ = digits_fits
    z = graph._trained.project(*graph._rows(X[:200]))
    S = z @ graph.cluster_prototypes_.T
    top = np.argsort(-S, axis=1, kind="stable")[:, :VOTE_NEIGHBOURS]
    expected = []
    for row, idx in zip(S, top):
        w = np.exp((row[idx] - row[idx].max()) / 0.1)
        expected.append(np.bincount(graph.cluster_prototype_labels_[idx], weights=w,
                                    minlength=10).argmax())
    assert_array_equal(graph.predict(X[:200]), expected)


def test_a_training_set_too_small_for_the_graph_uses_the_centroids():
    X = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = CueCoEmbedder(max_epochs=1, batch_size=4, n_clusters=6, random_state=0,
                            hidden_dim=16).fit(X)
    assert_array_equal(est.cluster_prototypes_, est.cluster_centers_)


def _two_cliques(n=6):
    A = np.zeros((2 * n, 2 * n))
    A[:n, :n] = 1.0
    A[n:, n:] = 1.0
    return scipy.sparse.csr_matrix(A)


def test_modularity_of_known_partitions():
    A = _two_cliques()
    by_clique = np.repeat([0, 1], 6)
    assert modularity(A, by_clique) == pytest.approx(0.5)
    assert modularity(A, np.zeros(12, int)) == pytest.approx(0.0)
    mixed = np.tile([0, 1], 6)
    assert modularity(A, mixed) < 0.05
    # labels that skip a value are the same partition
    assert modularity(A, by_clique * 2) == pytest.approx(0.5)


def test_the_read_out_keeps_the_candidate_of_highest_modularity(monkeypatch):
    import skcueco._readout as module

    Z, y = _arcs(60)
    good, bad = y.copy(), np.tile([0, 1], 60)
    seen = {}

    def candidates(affinity, n_clusters, seed):
        seen["shape"] = affinity.shape
        return {"bad": bad, "good": good, "also bad": 1 - bad}

    monkeypatch.setattr(module, "candidate_partitions", candidates)
    assert_array_equal(graph_clusters(torch.from_numpy(Z), 2, 10, seed=0), good)
    assert seen["shape"] == (120, 120)


def test_candidates_share_one_spectral_embedding_of_the_graph(monkeypatch):
    import skcueco._readout as module

    Z, _ = _arcs(100)
    A = knn_graph(torch.from_numpy(Z), 11)
    solved, merged = [], []
    maps, spectral = module._spectral_maps, module._spectral
    monkeypatch.setattr(module, "_spectral_maps",
                        lambda a, k, s: solved.append((a.shape[0], k)) or maps(a, k, s))
    monkeypatch.setattr(module, "_spectral",
                        lambda a, k, s: merged.append((a.shape[0], k)) or spectral(a, k, s))
    found = candidate_partitions(A, 3, seed=0)
    assert set(found) == {"cut x 1, spectral", "cut x 3, spectral", "cut x 3, linkage",
                          "cut x 5, spectral"}
    for labels in found.values():
        assert labels.shape == (200,) and set(labels) <= {0, 1, 2} and len(set(labels)) == 3
    # the graph's eigenproblem is solved once, for the finest cut (15 groups);
    # only the small graphs between groups (9 and 15 of them) go to SpectralClustering
    assert solved == [(200, 15)]
    assert sorted(merged) == [(9, 3), (15, 3)]
    # a graph too small for finer groups is cut once, straight into the clusters
    solved.clear()
    merged.clear()
    small = candidate_partitions(knn_graph(torch.from_numpy(Z[:6]), 3), 3, seed=0)
    assert solved == [(6, 3)] and not merged
    assert set(small) == {"cut x 1, spectral", "cut x 3, spectral", "cut x 5, spectral"}


@pytest.mark.parametrize("n_groups", [3, 9, 15])
def test_each_cut_is_scikit_learns_spectral_clustering(n_groups):
    """The first k columns of the shared embedding cut the graph as SpectralClustering(k) does."""
    from sklearn.metrics import adjusted_rand_score

    from skcueco._readout import _qr_groups, _spectral, _spectral_maps

    Z, _ = _arcs(100)
    A = knn_graph(torch.from_numpy(Z), 11)
    shared = _qr_groups(_spectral_maps(A, 15, seed=0)[:, :n_groups])
    assert len(set(shared)) == n_groups
    assert adjusted_rand_score(_spectral(A, n_groups, seed=0), shared) == pytest.approx(1.0)


def test_a_large_training_set_is_read_on_a_fixed_subset(monkeypatch):
    import skcueco._readout as module

    Z, y = _arcs(150)
    P = torch.from_numpy(Z)
    centroids = torch.from_numpy(_unit(np.stack([Z[y == c].mean(0) for c in (0, 1)])))
    seen = []
    graph = module.graph_clusters
    monkeypatch.setattr(module, "graph_clusters",
                        lambda p, k, n, s: seen.append(p.shape[0]) or graph(p, k, n, s))
    monkeypatch.setattr(module, "READOUT_ROWS", 150)
    _, prototypes, owners = readout(P, centroids, 10, seed=3)
    assert seen == [150] and prototypes.shape == (150, 3)
    # every prototype is a row of the set
    assert (prototypes[:, None, :] == P[None]).all(-1).any(1).all()
    # the prototypes found on the subset still separate the whole set
    labels = vote_clusters(P, prototypes, owners, 2, VOTE_NEIGHBOURS).numpy()
    assert normalized_mutual_info_score(y, labels) > 0.9
    # the same subset every time for a seed
    again = readout(P, centroids, 10, seed=3)[1]
    assert torch.equal(prototypes, again)


def test_cuts_into_too_many_groups_are_skipped(monkeypatch):
    import skcueco._readout as module

    Z, _ = _arcs(100)
    A = knn_graph(torch.from_numpy(Z), 11)
    monkeypatch.setattr(module, "MAX_GROUPS", 10)
    found = candidate_partitions(A, 3, seed=0)
    # 9 groups stay (3 per cluster), 15 (5 per cluster) are skipped
    assert set(found) == {"cut x 1, spectral", "cut x 3, spectral", "cut x 3, linkage"}
    monkeypatch.setattr(module, "MAX_GROUPS", 2)
    assert set(candidate_partitions(A, 3, seed=0)) == {"cut x 1, spectral"}


# -- views of the images read ---------------------------------------------------

def test_views_link_the_images_by_what_their_views_share():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 100)
    # projections without structure; views (4 unit vectors each) that hold two groups
    P = torch.from_numpy(_unit(rng.normal(size=(200, 3))).astype(np.float32))
    Z = _unit(np.eye(3)[y] + rng.normal(scale=0.1, size=(200, 3)))
    views = torch.from_numpy((4 * Z).astype(np.float32))
    centroids = torch.from_numpy(_unit(np.eye(2, 3)).astype(np.float32))
    plain = readout(P, centroids, 10, seed=0)[2].numpy()
    centers, prototypes, owners = readout(P, centroids, 10, seed=0, views=views)
    assert normalized_mutual_info_score(y, plain) < 0.2
    assert normalized_mutual_info_score(y, owners.numpy()) > 0.9
    # the prototypes stay the images' own projections, the centers their means
    assert torch.equal(prototypes, P)
    for c in (0, 1):
        mean = P.numpy()[owners.numpy() == c].mean(0)
        np.testing.assert_allclose(centers[c].numpy(), mean / np.linalg.norm(mean), rtol=1e-5)
    # views that add nothing leave the clusters as they were
    assert_array_equal(readout(P, centroids, 10, seed=0, views=torch.zeros_like(P))[2], plain)


def test_views_of_another_shape_are_refused():
    Z, _ = _arcs(20)
    P = torch.from_numpy(Z)
    with pytest.raises(ValueError, match="views has shape"):
        readout(P, torch.eye(2, 3), 5, seed=0, views=torch.zeros(len(Z) - 1, 3))


@pytest.mark.parametrize("kind, shape, expected", [
    ("image", (1, 8, 8), 0), ("image", (1, 16, 12), 0), ("image", (1, 16, 16), None),
    ("image", (3, 32, 16), None), ("vector", (256,), 0),
])
def test_views_are_added_on_images_of_16_pixels_and_more(kind, shape, expected):
    from skcueco._readout import READOUT_VIEWS, uses_views
    from skcueco.data.validation import InputSpec

    assert READOUT_VIEWS > 0
    spec = InputSpec(kind, shape)
    assert uses_views(spec) == (READOUT_VIEWS if expected is None else expected)
    # views of an augmentation that changes nothing are the images themselves
    assert uses_views(spec, "none") == 0
    assert uses_views(spec, lambda x, generator: x) == uses_views(spec)


def test_view_pass_sums_the_unit_projections_of_seeded_views():
    from skcueco.training.run import view_pass

    torch.manual_seed(0)
    encoder, projector = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)
    X = np.random.default_rng(0).normal(size=(37, 6)).astype(np.float32)

    def identity(x, generator):
        return x

    def noisy(x, generator):
        return x + torch.randn(x.shape, generator=generator)

    cpu = torch.device("cpu")
    clean = torch.nn.functional.normalize(projector(encoder(torch.from_numpy(X))), dim=1)
    twice = view_pass(encoder, projector, torch.as_tensor, identity, X, 8, cpu, 2, seed=0)
    np.testing.assert_allclose(twice.numpy(), 2 * clean.detach().numpy(), rtol=1e-5, atol=1e-6)
    a = view_pass(encoder, projector, torch.as_tensor, noisy, X, 8, cpu, 3, seed=1)
    assert torch.equal(a, view_pass(encoder, projector, torch.as_tensor, noisy, X, 8, cpu, 3,
                                    seed=1))
    assert not torch.allclose(a, view_pass(encoder, projector, torch.as_tensor, noisy, X, 8, cpu,
                                           3, seed=2))
    assert not torch.allclose(a, 3 * clean)
    # each view's projection is a unit vector, so the sum is at most n_views long
    assert (a.norm(dim=1) <= 3 + 1e-5).all()


def _digits16(n=400):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    # each pixel doubled: 16x16 images
    return np.kron(X[:n].reshape(-1, 8, 8), np.ones((2, 2))).astype(np.float32), y[:n]


def test_fit_reads_the_clusters_with_views_on_large_enough_images(monkeypatch):
    import skcueco.training.run as run
    from skcueco._readout import READOUT_VIEWS
    from sklearn.datasets import load_digits

    calls = []
    original = run.view_pass

    def spy(encoder, projector, preprocess, augmentation, X, *args):
        calls.append((X.shape[0], args[2]))
        return original(encoder, projector, preprocess, augmentation, X, *args)

    monkeypatch.setattr(run, "view_pass", spy)
    params = dict(max_epochs=2, batch_size=64, random_state=0, hidden_dim=64, amp=False)
    X16, _ = _digits16()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = CueCoEmbedder(**params).fit(X16)
        again = CueCoEmbedder(**params).fit(X16)
        assert calls == [(400, READOUT_VIEWS)] * 2
        CueCoEmbedder(**params).fit(load_digits().data[:400])  # 8x8: no views
    assert calls == [(400, READOUT_VIEWS)] * 2
    # reproducible, and the published clusters are the graph of projections plus views
    assert_array_equal(est.cluster_prototype_labels_, again.cluster_prototype_labels_)
    assert_array_equal(est.predict(X16), again.predict(X16))
    trained, seed = est._trained, est._seeds().model
    rows, spec = est._rows(X16)
    P = torch.from_numpy(trained.project(rows, spec))
    views = trained.read_views(rows, spec, est.augmentation, READOUT_VIEWS, seed)
    owners = readout(P, trained.centroids, est.cluster_graph, seed, views=views)[2]
    assert_array_equal(owners.numpy(), est.cluster_prototype_labels_)

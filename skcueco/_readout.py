"""The clusters ``predict`` gives, read from the neighbourhood graph of the training set.

At the end of ``fit``, the unit projections of the training images are linked
to their ``n_neighbors`` most similar ones (cosine). Spectral clustering of that
graph (scikit-learn's :class:`~sklearn.cluster.SpectralClustering`, QR
assignment) first cuts it into ``OVERSEGMENT * n_clusters`` small groups, which
rarely mix classes; spectral clustering of the graph between those groups (the
summed affinities of their members) then merges them into ``n_clusters``
clusters, so that a class spread over several groups is not split. Each cluster keeps a few
prototypes (spherical k-means of its members' projections) and its mean
direction (``cluster_centers_``); ``predict`` gives an image the cluster of
its most similar prototype, so inference stays a nearest-neighbour lookup
among ``n_clusters * PROTOTYPES_PER_CLUSTER`` vectors. docs/method.rst
describes it and docs/method_results.rst has the measurements behind it.

Why a graph: the classes of real images often form several compact groups
in the embedding, which a centroid per class splits or merges, while the
images of a group are each other's nearest neighbours. Several prototypes
per cluster follow groups that are not convex.
"""

import warnings

import numpy as np
import scipy.sparse
import torch
from sklearn.cluster import KMeans, SpectralClustering

PROTOTYPES_PER_CLUSTER = 5
"""Prototypes that represent each cluster in ``predict``."""
OVERSEGMENT = 3
"""Small groups cut from the graph per cluster, before they are merged."""
KNN_CHUNK_VALUES = 1 << 24
"""Similarities computed at once while building the graph (64 MB of float32)."""


def knn_graph(Z, n_neighbors):
    """Symmetric k-nearest-neighbour affinity of the unit rows ``Z``.

    Each row is linked to its ``n_neighbors`` most cosine-similar rows, itself
    included; the affinity is ``(C + C.T) / 2`` for that connectivity ``C``,
    as scikit-learn builds it for ``affinity="nearest_neighbors"``. Computed
    in chunks of rows on ``Z``'s device, so memory stays within about
    ``KNN_CHUNK_VALUES`` similarities plus the sparse graph.

    Parameters
    ----------
    Z : torch.Tensor of shape (n_samples, dim)
        Unit rows.
    n_neighbors : int
        Neighbours per row, itself included.

    Returns
    -------
    affinity : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
    """
    n = Z.shape[0]
    rows = max(1, KNN_CHUNK_VALUES // max(1, n))
    neighbours = []
    with torch.no_grad():
        for start in range(0, n, rows):
            sims = Z[start:start + rows].float() @ Z.float().T
            # a row is its own nearest neighbour, whatever rounding says
            idx = torch.arange(sims.shape[0], device=sims.device)
            sims[idx, start + idx] = float("inf")
            neighbours.append(sims.topk(n_neighbors, dim=1).indices.cpu())
    cols = torch.cat(neighbours).numpy().ravel()
    C = scipy.sparse.csr_matrix(
        (np.ones(cols.size), (np.repeat(np.arange(n), n_neighbors), cols)), shape=(n, n))
    return ((C + C.T) * 0.5).tocsr()


def _spectral(affinity, n_clusters, seed):
    model = SpectralClustering(n_clusters=n_clusters, affinity="precomputed",
                               assign_labels="cluster_qr", random_state=seed)
    with warnings.catch_warnings():
        # a graph in several pieces is expected: each piece is a cluster
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        return model.fit_predict(affinity)


def graph_clusters(projections, n_clusters, n_neighbors, seed):
    """Cluster labels of the training projections from their kNN graph.

    The graph is cut into ``OVERSEGMENT * n_clusters`` groups (at most half
    the number of rows), and the groups are merged into ``n_clusters`` by
    spectral clustering of the graph between groups.

    Parameters
    ----------
    projections : torch.Tensor of shape (n_samples, dim)
        Unit projections of the training set.
    n_clusters : int
        Number of clusters.
    n_neighbors : int
        Neighbours per image in the graph (capped at ``n_samples - 1``).
    seed : int
        Seeds the eigensolver's start vector.

    Returns
    -------
    labels : ndarray of shape (n_samples,)
        Cluster of each row, in ``[0, n_clusters)``.
    """
    n = projections.shape[0]
    affinity = knn_graph(projections, min(n_neighbors + 1, n))
    n_groups = min(OVERSEGMENT * n_clusters, n // 2)
    if n_groups <= n_clusters:
        return _spectral(affinity, n_clusters, seed)
    groups = _spectral(affinity, n_groups, seed)
    # affinity between groups: the summed affinity of their members
    member = scipy.sparse.csr_matrix((np.ones(n), (np.arange(n), groups)), shape=(n, n_groups))
    between = (member.T @ affinity @ member).toarray()
    return _spectral(between, n_clusters, seed)[groups]


def readout(projections, centroids, n_neighbors, seed):
    """``(centers, prototypes, owners)`` from the graph clusters of ``projections``.

    Parameters
    ----------
    projections : torch.Tensor of shape (n_samples, dim)
        Unit projections of the training set.
    centroids : torch.Tensor of shape (n_clusters, dim)
        The trained centroids: they stay the centre of a cluster the graph
        leaves empty.
    n_neighbors : int
        Neighbours per image in the graph.
    seed : int
        Seeds the eigensolver and the k-means of the prototypes.

    Returns
    -------
    centers : torch.Tensor of shape (n_clusters, dim)
        Unit mean direction of each cluster's projections.
    prototypes : torch.Tensor of shape (n_clusters * PROTOTYPES_PER_CLUSTER, dim)
        Unit prototypes; a cluster with fewer members than prototypes repeats
        some, so the shape never depends on the data.
    owners : torch.Tensor of shape (n_clusters * PROTOTYPES_PER_CLUSTER,)
        The cluster of each prototype (int64).
    """
    labels = graph_clusters(projections, centroids.shape[0], n_neighbors, seed)
    return cluster_prototypes(projections, labels, centroids, seed)


def cluster_prototypes(projections, labels, centroids, seed):
    """``(centers, prototypes, owners)`` of the clusters ``labels`` of ``projections``.

    Each cluster keeps its unit mean direction and ``PROTOTYPES_PER_CLUSTER``
    prototypes (spherical k-means of its members); a cluster without members
    keeps its trained centroid. ``readout`` documents the returned arrays.
    """
    n_clusters = centroids.shape[0]
    P = projections.detach().float().cpu().numpy().astype(np.float64)
    centers = centroids.detach().float().cpu().numpy().astype(np.float64).copy()
    prototypes, owners = [], []
    for c in range(n_clusters):
        members = P[labels == c]
        if len(members) == 0:
            found = centers[c:c + 1]
        else:
            centers[c] = members.mean(axis=0)
            # no more prototypes than distinct members (repeated images)
            m = min(PROTOTYPES_PER_CLUSTER, len(np.unique(members, axis=0)))
            found = members.mean(axis=0, keepdims=True) if m == 1 else KMeans(
                m, n_init=3, random_state=seed).fit(members).cluster_centers_
        reps = np.resize(np.arange(len(found)), PROTOTYPES_PER_CLUSTER)
        prototypes.append(found[reps])
        owners += [c] * PROTOTYPES_PER_CLUSTER

    def unit(A):
        return torch.from_numpy(A / np.linalg.norm(A, axis=1, keepdims=True).clip(1e-12)).float()

    return (unit(centers), unit(np.concatenate(prototypes)),
            torch.tensor(owners, dtype=torch.int64))

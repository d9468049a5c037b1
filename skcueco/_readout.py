"""The clusters ``predict`` gives, read from the neighbourhood graph of the training set.

At the end of ``fit``, the unit projections of the training images are linked
to their ``n_neighbors`` most similar ones (cosine); on images of
``VIEWS_MIN_SIDE`` pixels and more, each image by its projection plus those
of ``READOUT_VIEWS`` random views of it. Spectral clustering of that
graph (the graph's spectral embedding, then QR assignment, as scikit-learn's
:class:`~sklearn.cluster.SpectralClustering` with ``assign_labels="cluster_qr"``)
cuts it into ``f * n_clusters`` small groups for each ``f`` of
``OVERSEGMENTS``, which rarely mix classes; the groups are merged into
``n_clusters`` clusters by spectral clustering of the graph between them (the
summed affinities of their members), and the ``3 * n_clusters`` groups also
by average linkage of their normalised affinity, so that a class spread over
several groups is not split. Of these few partitions, the one with the
highest modularity on the graph is kept: the cut that best separates densely
linked neighbourhoods, chosen without labels. The projections read become
the prototypes, each with its cluster, and each cluster keeps its mean
direction (``cluster_centers_``); ``predict`` gives an image the cluster of
the weighted vote of its ``VOTE_NEIGHBOURS`` most similar prototypes
(:func:`~skcueco.nn.vote.prototype_vote`), so inference stays a lookup among
at most ``READOUT_ROWS`` vectors. docs/method.rst describes it and
docs/method_results.rst has the measurements behind it.

Why a graph: the classes of real images often form several compact groups
in the embedding, which a centroid per class splits or merges, while the
images of a group are each other's nearest neighbours. Why a vote of the
read images rather than a few prototypes per cluster: a new image goes where
its neighbours went, which follows clusters of any shape, and the vote of
several smooths the few images the cut put on the wrong side.
"""

import warnings

import numpy as np
import scipy.sparse
import torch
import scipy.linalg
from sklearn.cluster import AgglomerativeClustering, SpectralClustering
from sklearn.manifold import spectral_embedding

OVERSEGMENTS = (1, 3, 5)
"""Small groups cut from the graph per cluster before they are merged (1: a direct cut)."""
LINKAGE_OVERSEGMENT = 3
"""The groups per cluster that are also merged by average linkage."""
READOUT_ROWS = 5000
"""At most this many training images (a fixed random subset) are read out: the
graph's eigenvectors cost grows fast with its size, and this many images find
the clusters and their prototypes as well as all of them."""
MAX_GROUPS = 200
"""Cuts into more groups than this are skipped (the direct cut is always made):
the eigenvectors of a cut grow with its number of groups."""
KNN_CHUNK_VALUES = 1 << 24
"""Similarities computed at once while building the graph (64 MB of float32)."""
READOUT_VIEWS = 4
"""Random views (the training augmentation) of each image read, whose unit
projections are added to its own before the graph is built, on images of
``VIEWS_MIN_SIDE`` pixels and more; the prototypes stay the images' own
projections."""
VIEWS_MIN_SIDE = 16
"""The shorter image side from which the read-out adds views: on smaller images
a crop keeps too little of the image (on the 8x8 digits the views cost the
clusters; docs/method_results.rst)."""


def uses_views(spec, augmentation="auto"):
    """Number of views the read-out adds for training rows described by ``spec``.

    ``READOUT_VIEWS`` for images whose shorter side has at least
    ``VIEWS_MIN_SIDE`` pixels, else 0 (vectors and small images); 0 also
    with ``augmentation="none"``, whose views are the images themselves.
    """
    if (spec.shorter_side < VIEWS_MIN_SIDE
            or (isinstance(augmentation, str) and augmentation == "none")):
        return 0
    return READOUT_VIEWS


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


def _spectral_maps(affinity, n_components, seed):
    """The graph's spectral embedding, as :class:`~sklearn.cluster.SpectralClustering` computes it.

    Its columns are ordered from the smoothest eigenvector, so the first
    ``k`` of them are the embedding of a cut into ``k`` groups: the graph's
    eigenproblem is solved once for every cut.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        return spectral_embedding(affinity, n_components=n_components, drop_first=False,
                                  random_state=np.random.RandomState(seed))


def _qr_groups(maps):
    """QR assignment of the rows of a spectral embedding to ``maps.shape[1]`` groups.

    The rule of ``SpectralClustering(assign_labels="cluster_qr")`` (Damle,
    Minden and Ying, 2019), written out because scikit-learn exposes it only
    through that estimator, which solves the eigenproblem again for each cut.
    """
    k = maps.shape[1]
    _, _, pivots = scipy.linalg.qr(maps.T, pivoting=True)
    u, _, vt = scipy.linalg.svd(maps[pivots[:k]].T)
    return np.abs(maps @ (u @ vt)).argmax(axis=1)


def modularity(affinity, labels):
    """Newman's modularity of the partition ``labels`` of the weighted graph ``affinity``.

    The share of the graph's weight inside clusters, minus the share expected
    if edges fell at random with the same degrees: high for a cut between
    densely linked groups, 0 for a single cluster.
    """
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    member = scipy.sparse.csr_matrix(
        (np.ones(labels.size), (np.arange(labels.size), labels)), shape=(labels.size, k))
    inside = (member.T @ affinity @ member).diagonal()
    degree = np.asarray(member.T @ affinity.sum(axis=1)).ravel()
    total = float(affinity.sum())
    return float(inside.sum() / total - ((degree / total) ** 2).sum())


def _merged_by_linkage(between, n_clusters):
    """Average-linkage merge of groups by their degree-normalised affinity."""
    volume = between.sum(axis=1)
    similarity = between / np.sqrt(np.outer(volume, volume)).clip(1e-12)
    distance = 1.0 - similarity / max(similarity.max(), 1e-12)
    np.fill_diagonal(distance, 0.0)
    merge = AgglomerativeClustering(n_clusters, metric="precomputed", linkage="average")
    return merge.fit_predict(distance)


def candidate_partitions(affinity, n_clusters, seed):
    """The partitions ``graph_clusters`` chooses from: ``{name: labels}``.

    ``"cut x f, spectral"``: the graph cut into ``f * n_clusters`` groups (at
    most half the rows), merged into ``n_clusters`` by spectral clustering of
    the graph between groups (``f = 1``: a direct cut); ``"cut x 3,
    linkage"``: the ``3 * n_clusters`` groups merged by average linkage.
    Cuts into more than ``MAX_GROUPS`` groups are skipped, except the direct
    cut. All cuts share one spectral embedding of the graph (the columns a
    cut into ``k`` groups needs are its first ``k``).
    """
    n = affinity.shape[0]
    sizes = {}
    for factor in OVERSEGMENTS:
        n_groups = min(factor * n_clusters, n // 2)
        if n_groups <= n_clusters:
            sizes[factor] = n_clusters
        elif n_groups <= MAX_GROUPS:
            sizes[factor] = n_groups
    maps = _spectral_maps(affinity, max(sizes.values()), seed)
    found = {}
    for factor, n_groups in sizes.items():
        groups = _qr_groups(maps[:, :n_groups])
        if n_groups == n_clusters:
            found[f"cut x {factor}, spectral"] = groups
            continue
        # affinity between groups: the summed affinity of their members
        member = scipy.sparse.csr_matrix(
            (np.ones(n), (np.arange(n), groups)), shape=(n, n_groups))
        between = (member.T @ affinity @ member).toarray()
        found[f"cut x {factor}, spectral"] = _spectral(between, n_clusters, seed)[groups]
        if factor == LINKAGE_OVERSEGMENT:
            found[f"cut x {factor}, linkage"] = _merged_by_linkage(between, n_clusters)[groups]
    return found


def graph_clusters(projections, n_clusters, n_neighbors, seed):
    """Cluster labels of the training projections from their kNN graph.

    Of the partitions of :func:`candidate_partitions`, the one with the
    highest :func:`modularity` on the graph (the first on a tie).

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
    candidates = list(candidate_partitions(affinity, n_clusters, seed).values())
    scores = [modularity(affinity, labels) for labels in candidates]
    return candidates[int(np.argmax(scores))]


def readout_rows(n_samples, seed):
    """The rows :func:`readout` reads of ``n_samples`` projections.

    Parameters
    ----------
    n_samples : int
        Number of training images.
    seed : int
        Seeds the subset, as in :func:`readout`.

    Returns
    -------
    rows : ndarray of shape (READOUT_ROWS,) or None
        None when ``n_samples <= READOUT_ROWS`` (every row is read); else a
        fixed random subset of ``READOUT_ROWS`` rows, sorted. The same
        ``n_samples`` and ``seed`` always give the same rows, so a caller
        that needs only the rows read (the graph targets, every few epochs)
        can compute just those and pass them to :func:`readout`.
    """
    if n_samples <= READOUT_ROWS:
        return None
    return np.sort(np.random.RandomState(seed % 2**32).choice(n_samples, READOUT_ROWS,
                                                               replace=False))


def readout(projections, centroids, n_neighbors, seed, views=None):
    """``(centers, prototypes, owners)`` from the graph clusters of ``projections``.

    Of more than ``READOUT_ROWS`` projections, a fixed random subset of that
    many (seeded by ``seed``: :func:`readout_rows`) is read. With ``views``,
    the graph links the images by their projection plus the views' (the sum,
    normalised): a view-averaged projection keeps less of what an
    augmentation changes (position, crop, colour) and more of what it keeps,
    which the clusters should follow.

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
        Seeds the subset and the eigensolver.
    views : torch.Tensor of shape (n_read, dim), default=None
        The sum of the unit projections of random views of each image read
        (the rows of :func:`readout_rows`, in order), on ``projections``'
        device; None links the images by their projections alone.

    Returns
    -------
    centers : torch.Tensor of shape (n_clusters, dim)
        Unit mean direction of each cluster's projections.
    prototypes : torch.Tensor of shape (n_read, dim)
        The projections read (float32 CPU copies), ``n_read = min(n_samples,
        READOUT_ROWS)``, in their training order.
    owners : torch.Tensor of shape (n_read,)
        The cluster of each prototype (int64).
    """
    rows = readout_rows(projections.shape[0], seed)
    if rows is not None:
        projections = projections[torch.from_numpy(rows).to(projections.device)]
    linked = projections
    if views is not None:
        if views.shape != projections.shape:
            raise ValueError(f"views has shape {tuple(views.shape)}; the projections read "
                             f"have {tuple(projections.shape)}.")
        linked = torch.nn.functional.normalize(projections.float() + views.float(), dim=1)
    labels = graph_clusters(linked, centroids.shape[0], n_neighbors, seed)
    prototypes = projections.detach().float().cpu().clone()
    return (cluster_centers(prototypes, labels, centroids), prototypes,
            torch.from_numpy(labels.astype(np.int64)))


def cluster_centers(projections, labels, centroids):
    """Unit mean direction of each cluster ``labels`` of ``projections``.

    A cluster without members keeps its trained centroid.

    Parameters
    ----------
    projections : torch.Tensor of shape (n_samples, dim)
    labels : ndarray of shape (n_samples,)
        Cluster of each row, in ``[0, n_clusters)``.
    centroids : torch.Tensor of shape (n_clusters, dim)

    Returns
    -------
    centers : torch.Tensor of shape (n_clusters, dim), float32
    """
    P = projections.detach().float().cpu().numpy().astype(np.float64)
    centers = centroids.detach().float().cpu().numpy().astype(np.float64).copy()
    for c in range(centers.shape[0]):
        members = P[labels == c]
        if len(members):
            centers[c] = members.mean(axis=0)
    norms = np.linalg.norm(centers, axis=1, keepdims=True).clip(1e-12)
    return torch.from_numpy(centers / norms).float()

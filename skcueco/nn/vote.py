"""The cluster lookup of ``predict``: a weighted vote of the most similar prototypes.

A fitted model keeps prototypes (unit rows in the projection space), each
owned by one cluster. An image goes to the cluster whose prototypes among its
``n_votes`` most similar carry the largest summed weight
``exp((s - s_max) / temperature)``, ``s`` the cosine similarity and ``s_max``
the largest one of that image. With ``n_votes=1`` this is the cluster of the
most similar prototype. After the graph read-out the prototypes are the
training projections read, each with its cluster, so the vote is a weighted
nearest-neighbour vote (docs/method.rst, "Reading the clusters").

Pure PyTorch, deterministic on every device (no atomic additions), and
exportable by ``torch.export`` (no control flow on tensor values).
"""

import torch
import torch.nn.functional as F

VOTE_NEIGHBOURS = 10
"""Prototypes that vote on an image's cluster after the graph read-out."""
VOTE_TEMPERATURE = 0.1
"""Temperature of the vote's weights (that of the weighted kNN monitor)."""
VOTE_ROWS = 4096
"""Images voted at once by :func:`vote_clusters` (bounds the similarity block)."""


def prototype_vote(z, prototypes, owners, n_clusters, n_votes=1, temperature=VOTE_TEMPERATURE):
    """Cluster of each unit row of ``z``: the weighted vote of its most similar prototypes.

    Parameters
    ----------
    z : torch.Tensor of shape (N, D)
        Unit projections.
    prototypes : torch.Tensor of shape (P, D)
        Unit prototypes, on the device and in the dtype of ``z``.
    owners : torch.Tensor of shape (P,)
        The cluster of each prototype, int64 in ``[0, n_clusters)``.
    n_clusters : int
        Number of clusters.
    n_votes : int, default=1
        Prototypes that vote, at most ``P`` (:func:`vote_clusters` caps it);
        1: the cluster of the most similar one.
    temperature : float, default=VOTE_TEMPERATURE
        Softness of the weights: a prototype ``delta`` less similar than the
        most similar one weighs ``exp(-delta / temperature)``.

    Returns
    -------
    labels : torch.Tensor of shape (N,)
        int64 cluster of each row; a tie goes to the lower cluster index.
    """
    if n_votes <= 1:
        return owners[(z @ prototypes.T).argmax(dim=1)]
    return vote_tally(z, prototypes, owners, n_clusters, n_votes, temperature).argmax(dim=1)


def vote_tally(z, prototypes, owners, n_clusters, n_votes, temperature=VOTE_TEMPERATURE):
    """The summed vote weight of each cluster, for each unit row of ``z``.

    Parameters as :func:`prototype_vote` (``n_votes`` at most ``P``).

    Returns
    -------
    tally : torch.Tensor of shape (N, n_clusters)
        Sum of ``exp((s - s_max) / temperature)`` over the ``n_votes`` most
        similar prototypes each cluster owns; its row maximum is the vote's
        winner, and the winner's share of the row sum its margin.
    """
    similarity = z @ prototypes.T  # (N, P)
    top, idx = similarity.topk(n_votes, dim=1)  # (N, k), most similar first
    weights = torch.exp((top - top[:, :1]) / temperature)  # (N, k), in (0, 1]
    ballots = F.one_hot(owners, n_clusters).to(weights.dtype)[idx]  # (N, k, K)
    return (weights.unsqueeze(-1) * ballots).sum(dim=1)


def vote_clusters(z, prototypes, owners, n_clusters, n_votes=1, temperature=VOTE_TEMPERATURE):
    """:func:`prototype_vote` over blocks of ``VOTE_ROWS`` rows (bounded memory).

    Parameters and return value as :func:`prototype_vote`; ``n_votes`` may
    exceed the number of prototypes (all of them vote).
    """
    n_votes = min(int(n_votes), prototypes.shape[0])
    if z.shape[0] <= VOTE_ROWS:
        return prototype_vote(z, prototypes, owners, n_clusters, n_votes, temperature)
    return torch.cat([prototype_vote(block, prototypes, owners, n_clusters, n_votes, temperature)
                      for block in z.split(VOTE_ROWS)])

"""CueCo losses as pure functions: InfoNCE ("scatter") and cluster terms ("align").

All features are assumed to be L2-normalised rows. Logits are formed in float32
so that the functions stay numerically safe inside a bf16/fp16 autocast region,
where a matmul would otherwise return low-precision similarities and the
division by a small temperature would amplify their rounding error.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "info_nce", "cluster_pull", "proto_nce", "assign_clusters", "sinkhorn_assign",
    "ASSIGNMENTS",
]

# how keys are assigned to centroids (``CueCoModel(cluster_assign=...)``)
ASSIGNMENTS = ("argmax", "sinkhorn")


def info_nce(query, positive_key, negatives=None, temperature=0.2):
    """InfoNCE loss of queries against their positive keys.

    Parameters
    ----------
    query : Tensor of shape (n_samples, dim)
        L2-normalised query features; gradients flow through them.
    positive_key : Tensor of shape (n_samples, dim)
        L2-normalised keys, row ``i`` is the positive of ``query[i]``.
        Detach them (or compute them under ``no_grad``) for the MoCo setting.
    negatives : Tensor of shape (n_negatives, dim) or None, default=None
        L2-normalised negative keys shared by all queries (the queue). If None
        or empty, the other keys of the batch serve as negatives.
    temperature : float, default=0.2
        Softmax temperature tau.

    Returns
    -------
    loss : Tensor of shape ()
        Mean over the batch of the cross-entropy, in float32.

    Notes
    -----
    With a queue ``Q`` of ``K`` rows the loss for sample ``i`` is
    ``-log(exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_j exp(q_i.Q_j / tau)))``,
    which equals ``log(1 + K)`` when all similarities are equal. With in-batch
    negatives the logits are ``q @ k.T / tau`` and the target of row ``i`` is
    column ``i``; equal similarities give ``log(n_samples)``.

    With a queue the loss is computed as
    ``logaddexp(l_pos, logsumexp(l_neg)) - l_pos`` on logits of the query
    pre-scaled by ``1 / tau``: the same value as the cross-entropy over the
    concatenated ``[l_pos | l_neg] / tau``, without building that
    ``(n_samples, 1 + K)`` block or dividing it.

    Examples
    --------
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0]])
    >>> info_nce(q, q, negatives=torch.tensor([[0.0, 1.0]]), temperature=1.0)
    tensor(0.3133)
    """
    query = query.float()  # (N, D)
    positive_key = positive_key.float()  # (N, D)
    # An empty queue (queue_size=0) means in-batch negatives, so a caller can
    # pass ``queue.keys`` unconditionally instead of branching on its size.
    if negatives is None or negatives.shape[0] == 0:
        logits = query @ positive_key.T / temperature  # (N, N)
        target = torch.arange(query.shape[0], device=query.device)  # (N,)
        return F.cross_entropy(logits, target)
    # Cross-entropy with the positive in column 0 of [l_pos | l_neg] is
    # logsumexp([l_pos, l_neg]) - l_pos. Scaling the (N, D) query once instead
    # of the (N, K) logits, and combining the positive with the negatives'
    # logsumexp instead of concatenating them, leaves the matmul and a single
    # reduction as the only passes over the (N, K) block: with a large queue
    # those passes, not the backbone, would otherwise dominate a step.
    query = query / temperature  # (N, D)
    l_pos = (query * positive_key).sum(dim=1)  # (N,)
    l_neg = query @ negatives.float().T  # (N, K)
    return (torch.logaddexp(l_pos, torch.logsumexp(l_neg, dim=1)) - l_pos).mean()


def cluster_pull(query, centroids, assignments):
    """Mean squared distance of queries to their assigned centroids.

    Parameters
    ----------
    query : Tensor of shape (n_samples, dim)
        L2-normalised query features.
    centroids : Tensor of shape (n_clusters, dim)
        L2-normalised centroids; treated as constants (detached).
    assignments : LongTensor of shape (n_samples,)
        Index of the centroid each query is pulled towards.

    Returns
    -------
    loss : Tensor of shape ()
        ``mean_i (2 - 2 q_i . M[a_i])``, in float32.

    Notes
    -----
    For unit vectors ``||q - m||^2 = 2 - 2 q.m``; the dot-product form avoids a
    subtraction of nearly equal vectors and is cheaper.
    """
    target = centroids.detach().float()[assignments]  # (N, D)
    cos = (query.float() * target).sum(dim=1)  # (N,)
    return (2.0 - 2.0 * cos).mean()


def proto_nce(query, centroids, assignments, temperature=0.1):
    """Prototype cross-entropy of queries against all centroids (PCL-style).

    Parameters
    ----------
    query : Tensor of shape (n_samples, dim)
        L2-normalised query features.
    centroids : Tensor of shape (n_clusters, dim)
        L2-normalised centroids; treated as constants (detached).
    assignments : LongTensor of shape (n_samples,)
        Target centroid of each query.
    temperature : float, default=0.1
        Softmax temperature over centroids.

    Returns
    -------
    loss : Tensor of shape ()
        Mean cross-entropy, in float32. Unlike :func:`cluster_pull` it also
        pushes each query away from the centroids it is not assigned to.
    """
    logits = query.float() @ centroids.detach().float().T / temperature  # (N, K)
    return F.cross_entropy(logits, assignments)


@torch.no_grad()
def assign_clusters(keys, centroids):
    """Assign each key to its most similar centroid.

    Parameters
    ----------
    keys : Tensor of shape (n_samples, dim)
        L2-normalised key features.
    centroids : Tensor of shape (n_clusters, dim)
        L2-normalised centroids.

    Returns
    -------
    labels : LongTensor of shape (n_samples,)
        ``argmax_k keys . centroids[k]``.
    """
    sims = keys.float() @ centroids.float().T  # (N, K)
    return sims.argmax(dim=1)


@torch.no_grad()
def sinkhorn_assign(keys, centroids, n_iter=3, epsilon=0.05):
    """Balanced assignment of keys to centroids by Sinkhorn-Knopp (as SwAV).

    The soft assignment ``Q = diag(u) exp(S / epsilon) diag(v)`` of the
    similarities ``S = keys @ centroids.T`` is rescaled alternately so that
    every centroid receives the same total mass ``n_samples / n_clusters``
    and every key a mass of 1; each key then goes to the centroid of its
    largest entry. No single centroid can take the whole batch.

    Parameters
    ----------
    keys : Tensor of shape (n_samples, dim)
        L2-normalised key features.
    centroids : Tensor of shape (n_clusters, dim)
        L2-normalised centroids.
    n_iter : int, default=3
        Sinkhorn-Knopp iterations (each normalises columns, then rows).
    epsilon : float, default=0.05
        Entropic regularisation; smaller is closer to a hard equipartition.

    Returns
    -------
    labels : LongTensor of shape (n_samples,)
        Balanced hard assignments; ``n_iter=0`` gives
        :func:`assign_clusters`.

    Notes
    -----
    Computed in float32 in the log domain (row and column log-sum-exp), so
    a small ``epsilon`` does not overflow.
    """
    log_q = keys.float() @ centroids.float().T / epsilon  # (N, K)
    n_samples, n_clusters = log_q.shape
    for _ in range(n_iter):
        # every centroid (column) gets mass n_samples / n_clusters ...
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)
        log_q = log_q + torch.log(torch.tensor(n_samples / n_clusters, device=log_q.device))
        # ... and every key (row) mass 1
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q.argmax(dim=1)

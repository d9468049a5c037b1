"""CueCo losses as pure functions: InfoNCE ("scatter") and cluster terms ("align").

All features are assumed to be L2-normalised rows. Logits are formed in float32
so that the functions stay numerically safe inside a bf16/fp16 autocast region,
where a matmul would otherwise return low-precision similarities and the
division by a small temperature would amplify their rounding error.
"""

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "info_nce", "cluster_pull", "proto_nce", "assign_clusters", "sinkhorn_assign",
    "ASSIGNMENTS",
]

# how keys are assigned to centroids (``CueCoModel(cluster_assign=...)``;
# "argmax" is ``cluster_balance=0``)
ASSIGNMENTS = ("argmax", "sinkhorn")

# Elements of one (queries x negatives) block of the chunked log-sum-exp:
# 4 MB of float32, small enough to stay in a CPU's cache between the matmul
# that writes it and the exponential that reads it.
CHUNK_ELEMENTS = 1 << 20

# The logit given to a negative left out of InfoNCE: finite, so that a query
# with every negative left out keeps finite values and gradients, and so far
# below any similarity divided by a temperature that its exponential is 0.
LEFT_OUT = -1e9


def _float32(fn):
    """Run ``fn`` with autocast off, so its matmuls stay in float32.

    Under autocast a matmul would compute in bf16/fp16 even on float32
    inputs; similarities divided by a small temperature amplify that rounding.
    """
    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        with torch.autocast(first.device.type, enabled=False):
            return fn(first, *args, **kwargs)
    return wrapper


class _QueueLogSumExp(torch.autograd.Function):
    """``logsumexp(query @ negatives.T, dim=1)``, a chunk of negatives at a time.

    Each ``(N, C)`` chunk of similarities is reduced while it is in cache and
    turned, in place, into its own softmax ``exp(l - lse_chunk)``, which the
    backward needs: ``d lse / d query = sum_c w_c * (softmax_c @ negatives_c)``
    with ``w_c = exp(lse_chunk - lse)`` applied to the ``(N, D)`` products
    rather than to the ``(N, C)`` blocks. Compared with autograd through
    ``logsumexp`` over the whole ``(N, K)`` block, that saves two passes over
    the block from memory in the backward.
    """

    @staticmethod
    def forward(ctx, query, negatives, chunk, query_labels=None, negative_labels=None):
        blocks, parts = [], []
        for i in range(0, negatives.shape[0], chunk):
            logits = query @ negatives[i:i + chunk].T  # (N, C)
            if query_labels is not None:
                # a negative of the query's own label is left out: its
                # logit sinks to where its exponential is 0
                same = query_labels[:, None] == negative_labels[None, i:i + chunk]
                logits.masked_fill_(same, LEFT_OUT)
            lse = torch.logsumexp(logits, dim=1)  # (N,)
            blocks.append(logits.sub_(lse[:, None]).exp_())  # chunk softmax
            parts.append(lse)
        parts = torch.stack(parts, dim=1)  # (N, n_chunks)
        lse = torch.logsumexp(parts, dim=1)  # (N,)
        ctx.save_for_backward(query, negatives, parts.sub_(lse[:, None]).exp_(), *blocks)
        ctx.chunk = chunk
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lse):
        query, negatives, weights, *blocks = ctx.saved_tensors
        weights = weights * grad_lse[:, None]  # (N, n_chunks)
        grad_q = grad_neg = None
        if ctx.needs_input_grad[0]:
            grad_q = torch.zeros_like(query)
            for c, block in enumerate(blocks):
                part = negatives[c * ctx.chunk:(c + 1) * ctx.chunk]
                grad_q.addcmul_(weights[:, c:c + 1], block @ part)
        if ctx.needs_input_grad[1]:
            # only when the negatives require a gradient (never for a queue)
            grad_neg = torch.cat([block.T @ (query * weights[:, c:c + 1])
                                  for c, block in enumerate(blocks)])
        return grad_q, grad_neg, None, None, None


def queue_logsumexp(query, negatives, query_labels=None, negative_labels=None):
    """Row-wise ``logsumexp(query @ negatives.T)`` without the ``(N, K)`` block.

    Parameters
    ----------
    query : Tensor of shape (n_samples, dim)
        Float32 queries; gradients flow through them.
    negatives : Tensor of shape (n_negatives, dim)
        Float32 negatives (a queue: no gradient, unless they require one).
    query_labels, negative_labels : LongTensor of shape (n_samples,) and (n_negatives,), default=None
        When both are given, the negatives whose label is the query's are
        left out of that query's sum (a row with none left sums to about
        ``LEFT_OUT``, a finite value far below any similarity).

    Returns
    -------
    lse : Tensor of shape (n_samples,)
    """
    chunk = max(1, CHUNK_ELEMENTS // max(1, query.shape[0]))
    if query_labels is None or negative_labels is None:
        query_labels = negative_labels = None
    return _QueueLogSumExp.apply(query, negatives, chunk, query_labels, negative_labels)


@_float32
def info_nce(query, positive_key, negatives=None, temperature=0.2, *,
             query_labels=None, negative_labels=None):
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
    query_labels : LongTensor of shape (n_samples,), default=None
        A label per query (its cluster). With ``negative_labels``, the
        negatives of the query's label are left out of its loss
        (false-negative elimination, docs/method.rst); with in-batch
        negatives the labels of the other keys of the batch are
        ``query_labels`` themselves, and ``negative_labels`` is not read.
    negative_labels : LongTensor of shape (n_negatives,), default=None
        A label per row of ``negatives``.

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
        if query_labels is not None:
            same = query_labels[:, None] == query_labels[None, :]
            same.fill_diagonal_(False)  # the positive stays
            logits = logits.masked_fill(same, LEFT_OUT)
        return F.cross_entropy(logits, target)
    # Cross-entropy with the positive in column 0 of [l_pos | l_neg] is
    # logsumexp([l_pos, l_neg]) - l_pos. Scaling the (N, D) query once instead
    # of the (N, K) logits, combining the positive with the negatives'
    # logsumexp instead of concatenating them, and reducing the negatives a
    # cache-sized chunk at a time keep a large queue from dominating a step
    # (``benchmarks/throughput.py --queue``).
    query = query / temperature  # (N, D)
    l_pos = (query * positive_key).sum(dim=1)  # (N,)
    if query_labels is None:
        negative_labels = None
    lse_neg = queue_logsumexp(query, negatives.float(), query_labels, negative_labels)  # (N,)
    return (torch.logaddexp(l_pos, lse_neg) - l_pos).mean()


@_float32
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


@_float32
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
@_float32
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
@_float32
def sinkhorn_assign(keys, centroids, n_iter=3, epsilon=0.05, balance=1.0):
    """Balanced assignment of keys to centroids by Sinkhorn-Knopp (as SwAV).

    The soft assignment ``Q = diag(u) exp(S / epsilon) diag(v)`` of the
    similarities ``S = keys @ centroids.T`` is rescaled alternately so that
    every centroid receives the same total mass ``n_samples / n_clusters``
    and every key a mass of 1; each key then goes to the centroid of its
    largest entry. No single centroid can take the whole batch.

    ``balance`` below 1 relaxes the centroids' equal shares: the centroid
    constraint becomes a Kullback-Leibler penalty (unbalanced optimal
    transport, Chizat et al., 2018), whose Sinkhorn step raises the
    centroid rescaling to the power ``balance``. Groups of different sizes
    then keep more of their size, while a centroid that would take most of
    the batch is still held back.

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
    balance : float, default=1.0
        In ``[0, 1]``: 1 is the equipartition above; 0 leaves the centroids'
        shares free, which gives :func:`assign_clusters`. With a penalty
        weight ``tau`` on the centroid marginal, ``balance = tau / (tau +
        epsilon)``.

    Returns
    -------
    labels : LongTensor of shape (n_samples,)
        Balanced hard assignments; ``n_iter=0`` or ``balance=0`` gives
        :func:`assign_clusters`, but for near ties (below).

    Notes
    -----
    Computed in float32 in the log domain (row and column log-sum-exp), so
    a small ``epsilon`` does not overflow. The division by ``epsilon`` can
    round two similarities one float32 step apart to the same value, and
    the tie goes to the lower index: with ``balance=0`` such a key may then
    differ from :func:`assign_clusters`, which is why the training code
    calls :func:`assign_clusters` itself for the arg-max.
    """
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance must be in [0, 1], got {balance!r}.")
    log_q = keys.float() @ centroids.float().T / epsilon  # (N, K)
    n_samples, n_clusters = log_q.shape
    log_share = math.log(n_samples / n_clusters)
    for _ in range(n_iter):
        # every centroid (column) gets mass n_samples / n_clusters (with
        # balance < 1, only part of the way there: the KL-relaxed step) ...
        log_q = log_q + balance * (log_share - torch.logsumexp(log_q, dim=0, keepdim=True))
        # ... and every key (row) mass 1
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q.argmax(dim=1)

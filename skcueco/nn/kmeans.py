"""Spherical k-means with k-means++ seeding, in torch on any device."""

import torch
import torch.nn.functional as F

__all__ = ["spherical_kmeans"]


def _kmeans_plusplus(x, n_clusters, generator):
    """Pick ``n_clusters`` rows of ``x`` by k-means++ on cosine distance.

    Runs on ``x.device`` without a device-to-host copy: the random numbers are
    drawn up front, and each pick inverts the cumulative distribution of the
    weights with ``searchsorted``, so nothing waits for the device between
    picks.
    """
    n = x.shape[0]
    # Draws happen on the generator's device (CPU by default) so that a seed
    # gives the same random stream whatever device holds the data; one batch
    # of uniforms then moves to x's device.
    gen_device = generator.device
    # float64 keeps the cumulative sums of 1e5+ small weights exact enough;
    # MPS has no float64
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    first = torch.randint(n, (1,), generator=generator, device=gen_device).to(x.device)
    uniforms = torch.rand(n_clusters, generator=generator, device=gen_device,
                          dtype=torch.float64).to(x.device, acc)  # (K,)
    chosen = torch.empty(n_clusters, dtype=torch.long, device=x.device)  # (K,)
    chosen[:1] = first
    taken = torch.zeros(n, dtype=acc, device=x.device)  # (N,) 1 = chosen
    taken[first] = 1.0
    # For unit vectors 1 - cos is half the squared Euclidean distance, so it is
    # the D(x)^2 weighting of k-means++ up to a constant.
    dist = (1.0 - x @ x[first].T).squeeze(1).clamp_min(0.0)  # (N,)
    last = torch.tensor(n - 1, device=x.device)
    for k in range(1, n_clusters):
        cdf = torch.cumsum(dist, 0, dtype=acc)  # (N,)
        # Every point coinciding with a chosen centre (duplicates) leaves no
        # weight; any not-yet-chosen index is then as good as another. Chosen
        # without a branch, which would wait for the device.
        cdf = torch.where(cdf[-1] > 0, cdf, torch.cumsum(1.0 - taken, 0))  # (N,)
        # first index whose cumulative weight exceeds u * total: index i with
        # probability weight_i / total, never one of weight 0
        idx = torch.searchsorted(cdf, (uniforms[k] * cdf[-1]).reshape(1), right=True)
        idx = torch.minimum(idx, last)  # (1,) u * total rounding up to total
        chosen[k:k + 1] = idx
        taken[idx] = 1.0
        new_dist = (1.0 - x @ x[idx].T).squeeze(1).clamp_min(0.0)  # (N,)
        dist = torch.minimum(dist, new_dist)
    return x[chosen].clone()  # (K, D)


def _lloyd_step(x, centroids):
    """One assignment + update step; empty clusters move to the worst-fit points.

    No data-dependent branch: the step queues its work on the device without
    waiting for it.
    """
    n_clusters = centroids.shape[0]
    sims = x @ centroids.T  # (N, K)
    best, labels = sims.max(dim=1)  # (N,), (N,)
    # The normalised sum of a cluster's unit vectors is its mean direction.
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)  # (K, D)
    counts = torch.bincount(labels, minlength=n_clusters)  # (K,)
    norms = sums.norm(dim=1, keepdim=True)  # (K, 1)
    # Antipodal members can cancel out; keep the old centroid then.
    new = torch.where(norms > 1e-12, sums / norms.clamp_min(1e-12), centroids)
    # The j-th empty cluster moves to the point with the j-th lowest similarity
    # to its centroid (farthest in cosine distance); at most K can be empty.
    empty = counts == 0  # (K,)
    far = torch.topk(best, n_clusters, largest=False).indices  # (K,) ascending
    rank = torch.cumsum(empty, 0) - 1  # (K,) j for the j-th empty cluster
    return torch.where(empty.unsqueeze(1), x[far[rank.clamp_min(0)]], new)  # (K, D)


# Lloyd iterations between convergence checks off the CPU: each check waits
# for the device, and an iteration past convergence changes (almost) nothing.
_CHECK_EVERY = 5


@torch.no_grad()
def spherical_kmeans(x, n_clusters, n_iter=30, generator=None, tol=1e-6):
    """Cluster directions with spherical k-means.

    Parameters
    ----------
    x : Tensor of shape (n_samples, dim)
        Features; rows are L2-normalised before clustering, so only their
        direction matters.
    n_clusters : int
        Number of clusters K, at most ``n_samples``.
    n_iter : int, default=30
        Maximum number of Lloyd iterations after seeding.
    generator : torch.Generator or None, default=None
        Source of randomness for the k-means++ seeding. If None, a fresh
        non-deterministically seeded generator is used, leaving torch's global
        RNG untouched.
    tol : float, default=1e-6
        Stop when the summed squared movement of the centroids falls to or
        below ``tol``.

    Returns
    -------
    centroids : Tensor of shape (n_clusters, dim)
        Unit-norm centroids, on ``x.device``, in float32 (float64 if ``x`` is).
    labels : LongTensor of shape (n_samples,)
        Index of the most cosine-similar centroid for each row.

    Notes
    -----
    A cluster that ends an iteration empty is re-seeded at the points farthest
    (in cosine distance) from their current centroid, as scikit-learn's
    ``KMeans`` relocates empty clusters. The result is deterministic on CPU for
    a fixed generator seed.

    Seeding and iterations run on ``x.device``: the only waits for the device
    are one convergence check every few iterations (every iteration on the
    CPU, where it is free) and, once, the copy of the seeding's uniforms.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-dimensional, got shape {tuple(x.shape)}.")
    n = x.shape[0]
    if not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive int, got {n_clusters!r}.")
    if n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} must be at most n_samples={n}.")
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = F.normalize(x.detach().to(dtype), dim=1)  # (N, D)
    centroids = _kmeans_plusplus(x, n_clusters, generator)  # (K, D)

    # On the CPU a check costs nothing, so the loop stops at the first
    # converged iteration there; elsewhere it checks every _CHECK_EVERY.
    every = 1 if x.device.type == "cpu" else _CHECK_EVERY
    for i in range(n_iter):
        new = _lloyd_step(x, centroids)  # (K, D)
        shift = (new - centroids).pow(2).sum()
        centroids = new
        if (i + 1) % every == 0 and shift <= tol:
            break

    labels = (x @ centroids.T).argmax(dim=1)  # (N,)
    return centroids, labels

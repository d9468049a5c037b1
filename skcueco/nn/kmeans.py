"""Spherical k-means with k-means++ seeding, in torch on any device."""

import torch
import torch.nn.functional as F

__all__ = ["spherical_kmeans"]


def _kmeans_plusplus(x, n_clusters, generator):
    """Pick ``n_clusters`` rows of ``x`` by k-means++ on cosine distance."""
    n = x.shape[0]
    # Draws happen on the generator's device (CPU by default) so that a seed
    # gives the same random stream whatever device holds the data.
    gen_device = generator.device
    first = torch.randint(n, (1,), generator=generator, device=gen_device)
    chosen = [first.to(x.device)]
    # For unit vectors 1 - cos is half the squared Euclidean distance, so it is
    # the D(x)^2 weighting of k-means++ up to a constant.
    dist = (1.0 - x @ x[chosen[0]].T).squeeze(1).clamp_min(0.0)  # (N,)
    for _ in range(1, n_clusters):
        weights = dist.to(gen_device, torch.float64)  # (N,)
        if not weights.sum() > 0:
            # Every point coincides with a chosen centre (duplicates); any
            # not-yet-chosen index is as good as another.
            weights = torch.ones_like(weights)
            weights[torch.cat(chosen).to(gen_device)] = 0.0
        idx = torch.multinomial(weights, 1, generator=generator).to(x.device)  # (1,)
        chosen.append(idx)
        new_dist = (1.0 - x @ x[idx].T).squeeze(1).clamp_min(0.0)  # (N,)
        dist = torch.minimum(dist, new_dist)
    return x[torch.cat(chosen)].clone()  # (K, D)


def _lloyd_step(x, centroids):
    """One assignment + update step; empty clusters move to the worst-fit points."""
    n_clusters = centroids.shape[0]
    sims = x @ centroids.T  # (N, K)
    best, labels = sims.max(dim=1)  # (N,), (N,)
    # The normalised sum of a cluster's unit vectors is its mean direction.
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)  # (K, D)
    counts = torch.bincount(labels, minlength=n_clusters)  # (K,)
    norms = sums.norm(dim=1, keepdim=True)  # (K, 1)
    # Antipodal members can cancel out; keep the old centroid then.
    new = torch.where(norms > 1e-12, sums / norms.clamp_min(1e-12), centroids)
    empty = (counts == 0).nonzero().squeeze(1)  # (n_empty,)
    if empty.numel() > 0:
        # Lowest similarity to their centroid = farthest in cosine distance.
        far = torch.topk(best, empty.numel(), largest=False).indices  # (n_empty,)
        new[empty] = x[far]
    return new


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

    for _ in range(n_iter):
        new = _lloyd_step(x, centroids)  # (K, D)
        shift = (new - centroids).pow(2).sum()
        centroids = new
        if shift <= tol:
            break

    labels = (x @ centroids.T).argmax(dim=1)  # (N,)
    return centroids, labels

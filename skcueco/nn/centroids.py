"""The centroid bank: the ``K`` centroids and the over-clustering set, and how they move.

Both sets are unit vectors in the projection space. Keys are assigned to them
(balanced by Sinkhorn-Knopp, or the most similar centroid); they are
initialised by spherical k-means, moved by an online average of their keys,
and a centroid left without keys is re-seeded. After training, the ``K``
centroids alone are refined by k-means on the final projections
(docs/method.rst, "The centroids").
"""

import torch
import torch.nn.functional as F
from torch import nn

from .kmeans import _lloyd_step, spherical_kmeans
from .losses import assign_clusters, sinkhorn_assign
from .vote import VOTE_NEIGHBOURS, vote_tally

TARGET_CONFIDENCE = 0.7
"""With graph targets, a key whose vote gives the winning cluster less than
this share of the weight is assigned as without them (docs/method.rst)."""


class CentroidBank(nn.Module):
    """The ``K`` centroids, an optional finer set, and their training-time updates.

    Parameters
    ----------
    n_clusters : int
        Number of centroids ``K``.
    dim : int
        Dimension ``D`` of the centroids (the projection dimension).
    n_overclusters : int, default=0
        Size of the second, finer set (over-clustering); 0: none. It is
        assigned, updated and re-seeded as the ``K`` centroids, but never
        refined.
    balance : float, default=0.0
        How keys are assigned during training, in ``[0, 1]``: 0 gives each
        key its most similar centroid; above 0, Sinkhorn-Knopp over the keys
        at hand balances the centroids' shares (1: equal shares), as
        ``balance`` of :func:`~skcueco.nn.losses.sinkhorn_assign`.
    sinkhorn_iterations : int, default=3
        Sinkhorn-Knopp iterations when ``balance > 0``.
    momentum : float, default=0.9
        Momentum ``beta`` of the online update.
    generator : torch.Generator, default=None
        Source of randomness of the k-means seeding and the re-seeding.

    Attributes
    ----------
    overclusters_on : bool
        Whether the finer set is initialised and in use (a host-side copy of
        the ``overclusters_ready`` buffer, read every step without a device
        round trip).
    """

    def __init__(self, n_clusters, dim, *, n_overclusters=0, balance=0.0,
                 sinkhorn_iterations=3, momentum=0.9, generator=None):
        super().__init__()
        if isinstance(n_overclusters, bool) or not isinstance(n_overclusters, int) \
                or n_overclusters < 0:
            raise ValueError(f"n_overclusters must be an integer >= 0, got {n_overclusters!r}.")
        if isinstance(balance, bool) or not 0.0 <= balance <= 1.0:
            raise ValueError(f"balance must be in [0, 1], got {balance!r}.")
        self.balance = float(balance)
        self.sinkhorn_iterations = sinkhorn_iterations
        self.momentum = momentum
        self.generator = generator
        self.register_buffer("centroids", torch.zeros(n_clusters, dim))
        self.register_buffer("centroids_ready", torch.zeros((), dtype=torch.bool))
        # steps each centroid has gone without an assigned key; dead ones get re-seeded
        self.register_buffer("empty_steps", torch.zeros(n_clusters, dtype=torch.long))
        # the finer set: same roles, its own readiness (it needs at least
        # n_overclusters keys to start from, and states written before it
        # existed lack it)
        self.register_buffer("overclusters", torch.zeros(n_overclusters, dim))
        self.register_buffer("overclusters_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("overcluster_empty_steps",
                             torch.zeros(n_overclusters, dtype=torch.long))
        self.overclusters_on = False
        # graph targets (set_targets): labelled unit projections whose vote
        # assigns keys to the K centroids; not module buffers (their number
        # varies): the training task saves and restores them
        self.target_prototypes = None
        self.target_owners = None

    _OVERCLUSTER_KEYS = ("overclusters", "overclusters_ready", "overcluster_empty_steps")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # states written before the finer set existed lack it: the set then
        # starts unready, and training initialises it from the keys
        for name in self._OVERCLUSTER_KEYS:
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone()
                                  if name != "overclusters_ready"
                                  else torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.overclusters_on = bool(self.overclusters_ready) and self.overclusters.shape[0] > 0

    @property
    def wants_overclusters(self):
        """Whether the finer set exists but is not initialised yet."""
        return self.overclusters.shape[0] > 0 and not self.overclusters_on

    def assign(self, keys, centroids=None):
        """Training-time assignments of keys to centroids.

        Parameters
        ----------
        keys : torch.Tensor of shape (N, D)
            Unit-norm key projections; cast to float32.
        centroids : torch.Tensor of shape (K, D) or None, default=None
            Unit-norm centroids; None uses ``centroids``.

        Returns
        -------
        labels : torch.LongTensor of shape (N,)
            Index of the centroid assigned to each key: the most similar one
            with ``balance=0``, else the balanced Sinkhorn-Knopp assignment
            over ``keys``.
        """
        centroids = self.centroids if centroids is None else centroids
        if self.balance > 0:
            return sinkhorn_assign(keys.float(), centroids, self.sinkhorn_iterations,
                                   balance=self.balance)
        return assign_clusters(keys.float(), centroids)

    def assign_main(self, keys):
        """Training-time assignments of keys to the ``K`` centroids.

        With graph targets (:meth:`set_targets`), the weighted vote of each
        key's ``VOTE_NEIGHBOURS`` most similar target prototypes
        (:func:`~skcueco.nn.vote.vote_tally`) where its winner holds at least
        ``TARGET_CONFIDENCE`` of the weight, and :meth:`assign` (over all the
        keys, to the centroids the targets set) for the keys whose
        neighbours disagree; without targets, :meth:`assign`.

        Parameters
        ----------
        keys : torch.Tensor of shape (N, D)
            Unit-norm key projections; cast to float32.

        Returns
        -------
        labels : torch.LongTensor of shape (N,)
        """
        if self.target_prototypes is None:
            return self.assign(keys, self.centroids)
        n_votes = min(VOTE_NEIGHBOURS, self.target_prototypes.shape[0])
        tally = vote_tally(keys.float(), self.target_prototypes, self.target_owners,
                           self.centroids.shape[0], n_votes)
        winner = tally.max(dim=1)
        confident = winner.values >= TARGET_CONFIDENCE * tally.sum(dim=1)
        return torch.where(confident, winner.indices, self.assign(keys, self.centroids))

    @torch.no_grad()
    def set_targets(self, centers, prototypes, owners):
        """Make a partition of training projections the ``K`` centroids' targets.

        The centroids move onto the partition's cluster directions, and
        until the next call :meth:`assign_main` (and so the clustering term
        and :meth:`update`) assigns a key to the cluster its most similar
        prototypes vote for.

        Parameters
        ----------
        centers : torch.Tensor of shape (K, D)
            Unit mean direction of each cluster.
        prototypes : torch.Tensor of shape (P, D)
            Unit projections, each owned by a cluster.
        owners : torch.Tensor of shape (P,)
            The cluster of each prototype (int64).
        """
        device = self.centroids.device
        self.centroids.copy_(centers.to(device=device, dtype=self.centroids.dtype))
        self.centroids_ready.fill_(True)
        self.empty_steps.zero_()
        self.restore_targets(prototypes, owners)

    @torch.no_grad()
    def restore_targets(self, prototypes, owners):
        """Assign keys by the vote of ``prototypes`` again, the centroids left as they are.

        For a resumed run: the targets a saved state trained towards, while
        the centroids come back with the rest of the state.

        Parameters
        ----------
        prototypes : torch.Tensor of shape (P, D)
            Unit projections, each owned by a cluster.
        owners : torch.Tensor of shape (P,)
            The cluster of each prototype, in ``[0, K)``.
        """
        if prototypes.ndim != 2 or prototypes.shape[1] != self.centroids.shape[1] \
                or owners.shape != prototypes.shape[:1]:
            raise ValueError(
                f"Graph targets of shape {tuple(prototypes.shape)} with owners of shape "
                f"{tuple(owners.shape)} do not fit centroids of dimension "
                f"{self.centroids.shape[1]}.")
        if owners.numel() and not 0 <= int(owners.min()) <= int(owners.max()) \
                < self.centroids.shape[0]:
            raise ValueError(f"Graph target owners must lie in [0, {self.centroids.shape[0]}).")
        device = self.centroids.device
        self.target_prototypes = prototypes.to(device=device, dtype=torch.float32)
        self.target_owners = owners.to(device=device, dtype=torch.int64)

    @torch.no_grad()
    def initialise(self, features, n_iter=30, *, broadcast=None):
        """Spherical k-means (k-means++ seeding) of the ``K`` centroids, then the finer set.

        The centroids are marked ready and their counts of empty updates
        reset; the finer set follows (:meth:`initialise_overclusters`).

        Parameters
        ----------
        features : torch.Tensor of shape (M, D)
            Key features, ``M >= K``; only their direction matters (rows are
            L2-normalised before clustering).
        n_iter : int, default=30
            Maximum number of Lloyd iterations after the seeding.
        broadcast : callable, default=None
            ``broadcast(tensor)``, when given, overwrites the new centroids in
            place with those of one source process, so that every process
            holds the same ones.
        """
        self._kmeans_into(self.centroids, features, n_iter, broadcast)
        self.centroids_ready.fill_(True)
        self.empty_steps.zero_()
        self.initialise_overclusters(features, n_iter, broadcast=broadcast)

    @torch.no_grad()
    def initialise_overclusters(self, features, n_iter=30, *, broadcast=None):
        """Spherical k-means of the finer set.

        Does nothing without such a set, or when ``features`` has fewer rows
        than the set has centroids (the set then stays unready and the
        clustering term uses the ``K`` centroids alone).

        Parameters
        ----------
        features : torch.Tensor of shape (M, D)
            Key features; only their direction matters.
        n_iter : int, default=30
            Maximum number of Lloyd iterations after the seeding.
        broadcast : callable, default=None
            As in :meth:`initialise`.

        Returns
        -------
        ready : bool
            Whether the set is now initialised.
        """
        n_over = self.overclusters.shape[0]
        if n_over == 0 or features.shape[0] < n_over:
            return False
        self._kmeans_into(self.overclusters, features, n_iter, broadcast)
        self.overclusters_ready.fill_(True)
        self.overcluster_empty_steps.zero_()
        self.overclusters_on = True
        return True

    def _kmeans_into(self, out, features, n_iter, broadcast):
        centroids, _ = spherical_kmeans(
            features.float(), out.shape[0], n_iter=n_iter, generator=self.generator,
        )
        centroids = centroids.contiguous()
        if broadcast is not None:
            broadcast(centroids)
        out.copy_(centroids)

    def _sets(self):
        """``(centroids, empty_steps, assign)`` of each set in use."""
        yield self.centroids, self.empty_steps, lambda keys, centroids: self.assign_main(keys)
        if self.overclusters_on:
            yield self.overclusters, self.overcluster_empty_steps, self.assign

    @torch.no_grad()
    def update(self, keys, *, all_reduce=None):
        """Online update: ``M_k <- normalize(beta M_k + (1 - beta) mean(keys in k))``.

        Keys are assigned as in :meth:`assign`; a centroid that receives no
        key keeps its value. Also counts, per centroid, the consecutive
        updates without an assigned key (:meth:`reseed` reads the count).
        The finer set, once initialised, moves the same way.

        Parameters
        ----------
        keys : torch.Tensor of shape (M, D)
            Unit-norm key projections of the step; cast to float32.
        all_reduce : callable, default=None
            ``all_reduce(tensor)``, when given, sums the per-cluster counts
            and key sums over processes in place, so the keys of all
            processes move the centroids identically everywhere.
        """
        keys = keys.float()
        for centroids, empty_steps, assign in self._sets():
            a = assign(keys, centroids)  # (M,)
            # a fixed-length scatter, not bincount: bincount's output size
            # depends on the data, which reads the indices back to the host
            # on a GPU
            counts = torch.zeros(centroids.shape[0], dtype=torch.long, device=keys.device)
            counts.scatter_add_(0, a, torch.ones_like(a))  # (K,)
            sums = torch.zeros_like(centroids).index_add_(0, a, keys)  # (K, D)
            if all_reduce is not None:
                all_reduce(counts)
                all_reduce(sums)
            means = sums / counts.clamp_min(1).unsqueeze(1)
            beta = self.momentum
            updated = F.normalize(beta * centroids + (1 - beta) * means, dim=1)
            centroids.copy_(torch.where((counts > 0).unsqueeze(1), updated, centroids))
            empty_steps.add_(1).mul_(counts == 0)

    @torch.no_grad()
    def reseed(self, candidates, min_empty_steps):
        """Move centroids empty for ``min_empty_steps`` updates onto random candidates.

        The draw happens on the CPU generator: call it once per epoch, not
        per step, to spare the host round trip. Each moved centroid's count
        of empty updates is reset; without candidates nothing moves. The
        finer set, once initialised, is re-seeded the same way, after the
        ``K`` centroids.

        Parameters
        ----------
        candidates : torch.Tensor of shape (Q, D)
            Unit-norm keys to move dead centroids onto (the queue).
        min_empty_steps : int
            Number of consecutive :meth:`update` calls without an assigned
            key after which a centroid counts as dead. At most ``Q``
            centroids move per set; the others wait for a later call.

        Returns
        -------
        n_reseeded : int
            Number of centroids moved, over both sets.
        """
        n_candidates = candidates.shape[0]
        if n_candidates == 0:
            return 0
        n = 0
        for centroids, empty_steps, _ in self._sets():
            dead = (empty_steps >= min_empty_steps).nonzero().squeeze(1).cpu()  # (n_dead,)
            dead = dead[:n_candidates]  # one candidate per centroid at most
            if dead.numel():
                idx = torch.randperm(n_candidates, generator=self.generator)[: dead.numel()]
                device = centroids.device
                centroids[dead.to(device)] = candidates[idx.to(device)].float()
                empty_steps[dead.to(device)] = 0
            n += int(dead.numel())
        return n

    @torch.no_grad()
    def refine(self, features, n_iter, *, restarts=1):
        """Spherical k-means of the ``K`` centroids on ``features``, from where they are.

        ``restarts`` more runs start from k-means++ seeds (drawn from the
        generator); the centroids with the highest k-means objective (summed
        cosine similarity of each row to its centroid) are kept, so the
        result is never worse, by that objective, than the current centroids
        refined or a fresh k-means. Lloyd steps stop early when the centroids
        no longer move; an empty cluster moves to the worst-fitting point.
        The finer set is left as it is.

        Parameters
        ----------
        features : torch.Tensor of shape (M, D)
            Rows to cluster; L2-normalised before clustering.
        n_iter : int
            Maximum number of Lloyd iterations from each start.
        restarts : int, default=1
            Number of extra k-means++ starts, besides the current centroids;
            none when ``M < K``.

        Returns
        -------
        labels : torch.LongTensor of shape (M,)
            Index of the most similar refined centroid of each row.
        """
        x = F.normalize(features.float(), dim=1)  # (M, D)
        n_clusters = self.centroids.shape[0]
        starts = [self.centroids.float()]
        if n_clusters <= x.shape[0]:
            starts += [
                spherical_kmeans(x, n_clusters, n_iter=0, generator=self.generator)[0]
                for _ in range(restarts)
            ]
        best, best_score = None, None
        for centroids in starts:
            for _ in range(n_iter):
                new = _lloyd_step(x, centroids)  # (K, D)
                moved = (new - centroids).pow(2).sum()
                centroids = new
                if moved <= 1e-10:
                    break
            score = (x @ centroids.T).max(dim=1).values.sum()
            # ties keep the earlier start: the current centroids first
            if best_score is None or score > best_score:
                best, best_score = centroids, score
        self.centroids.copy_(best)
        return assign_clusters(x, best)

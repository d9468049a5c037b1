"""The CueCo model: query/key encoders, key queue, centroids and one training step.

The forward pass only encodes. Everything that changes state besides the
optimiser (EMA of the key network, the queue, the centroids) is an explicit
method the training loop calls after the optimiser step, so nothing moves
behind the caller's back.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .heads import PredictionHead, ProjectionHead
from .kmeans import _lloyd_step, spherical_kmeans
from .losses import (
    ASSIGNMENTS, assign_clusters, cluster_pull, info_nce, proto_nce, sinkhorn_assign,
)
from .momentum import ema_update
from .queue import KeyQueue


class CueCoModel(nn.Module):
    """Cluster Contrast: MoCo-style InfoNCE plus a centroid pull.

    Parameters
    ----------
    backbone : torch.nn.Module
        Feature extractor mapping a batch to ``(N, feature_dim)``.
    feature_dim : int
        Output dimension of ``backbone``.
    projection_dim : int, default=128
        Dimension ``D`` of the projections used by the losses.
    hidden_dim : int, default=2048
        Hidden width of the projector.
    queue_size : int, default=4096
        Number of negative keys kept; 0 uses the other keys of the batch.
    n_clusters : int, default=10
        Number of centroids ``K``.
    temperature : float, default=0.2
        InfoNCE temperature.
    cluster_loss : {"pull", "proto"}, default="pull"
        Clustering objective: squared distance to the assigned centroid, or a
        softmax cross-entropy against all centroids.
    cluster_temperature : float, default=0.1
        Temperature of the ``"proto"`` objective.
    cluster_momentum : float, default=0.9
        Momentum ``beta`` of the online centroid update.
    cluster_assign : {"argmax", "sinkhorn"}, default="argmax"
        How keys are assigned to centroids during training (the pull targets
        and the online update): the most similar centroid, or balanced
        assignments by Sinkhorn-Knopp over the batch
        (:func:`~skcueco.nn.losses.sinkhorn_assign`). :meth:`predict_clusters`
        always uses the most similar centroid.
    sinkhorn_iterations : int, default=3
        Sinkhorn-Knopp iterations of ``cluster_assign="sinkhorn"``.
    cluster_balance : float, default=1.0
        How strictly ``cluster_assign="sinkhorn"`` balances the centroids'
        shares of a batch, in ``[0, 1]``: 1 gives every centroid an equal
        share, smaller values let groups keep more of their size
        (``balance`` of :func:`~skcueco.nn.losses.sinkhorn_assign`).
    n_overclusters : int, default=0
        Size of a second, finer set of centroids (over-clustering). When it
        is ready, the clustering term is the mean of the term against the
        ``K`` centroids and against these; they are assigned, updated and
        re-seeded the same way, but never used by :meth:`predict_clusters`
        or :meth:`refine_centroids`. 0: no second set.
    predictor : bool, default=False
        Add a prediction head on the query side.
    generator : torch.Generator, default=None
        Source of randomness for the queue initialisation and centroid
        re-seeding.

    Notes
    -----
    With ``cluster_weight=0`` in :meth:`training_step` the loss is exactly the
    symmetric MoCo v2 loss.
    """

    def __init__(
        self,
        backbone,
        feature_dim,
        *,
        projection_dim=128,
        hidden_dim=2048,
        queue_size=4096,
        n_clusters=10,
        temperature=0.2,
        cluster_loss="pull",
        cluster_temperature=0.1,
        cluster_momentum=0.9,
        cluster_assign="argmax",
        sinkhorn_iterations=3,
        cluster_balance=1.0,
        n_overclusters=0,
        predictor=False,
        generator=None,
    ):
        super().__init__()
        if isinstance(n_overclusters, bool) or not isinstance(n_overclusters, int) \
                or n_overclusters < 0:
            raise ValueError(f"n_overclusters must be an integer >= 0, got {n_overclusters!r}.")
        if cluster_loss not in ("pull", "proto"):
            raise ValueError(f"cluster_loss must be 'pull' or 'proto', got {cluster_loss!r}.")
        if cluster_assign not in ASSIGNMENTS:
            raise ValueError(
                f"cluster_assign must be one of {ASSIGNMENTS}, got {cluster_assign!r}."
            )
        if isinstance(cluster_balance, bool) or not 0.0 <= cluster_balance <= 1.0:
            raise ValueError(f"cluster_balance must be in [0, 1], got {cluster_balance!r}.")
        self.cluster_assign = cluster_assign
        self.sinkhorn_iterations = sinkhorn_iterations
        self.cluster_balance = float(cluster_balance)
        self.temperature = temperature
        self.cluster_loss = cluster_loss
        self.cluster_temperature = cluster_temperature
        self.cluster_momentum = cluster_momentum
        self.generator = generator

        self.backbone_q = backbone
        self.projector_q = ProjectionHead(feature_dim, hidden_dim, projection_dim)
        self.predictor = PredictionHead(projection_dim) if predictor else nn.Identity()
        self.backbone_k = copy.deepcopy(self.backbone_q)
        self.projector_k = copy.deepcopy(self.projector_q)
        for p in self.key_parameters():
            p.requires_grad_(False)

        self.queue = KeyQueue(queue_size, projection_dim, generator=generator)
        self.register_buffer("centroids", torch.zeros(n_clusters, projection_dim))
        self.register_buffer("centroids_ready", torch.zeros((), dtype=torch.bool))
        # steps each centroid has gone without an assigned key; dead ones get re-seeded
        self.register_buffer("empty_steps", torch.zeros(n_clusters, dtype=torch.long))
        # the over-clustering set: same roles, its own readiness (it needs at
        # least n_overclusters keys to start from, and states written before
        # it existed lack it)
        self.register_buffer("overclusters", torch.zeros(n_overclusters, projection_dim))
        self.register_buffer("overclusters_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("overcluster_empty_steps",
                             torch.zeros(n_overclusters, dtype=torch.long))
        # host-side copy of overclusters_ready, read every step without a
        # device round trip; kept in step by the methods that set the buffer
        self._overclusters_on = False

    _OVERCLUSTER_KEYS = ("overclusters", "overclusters_ready", "overcluster_empty_steps")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # states written before the over-clustering set existed lack it: the
        # set then starts unready, and training initialises it from the keys
        for name in self._OVERCLUSTER_KEYS:
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone()
                                  if name != "overclusters_ready"
                                  else torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._overclusters_on = bool(self.overclusters_ready) and self.overclusters.shape[0] > 0

    @property
    def wants_overclusters(self):
        """Whether the over-clustering set exists but is not initialised yet."""
        return self.overclusters.shape[0] > 0 and not self._overclusters_on

    # -- encoders -------------------------------------------------------------
    def forward(self, x):
        """Backbone features of the query network.

        Parameters
        ----------
        x : torch.Tensor of shape (N, ...)
            A batch of inputs, as ``backbone`` takes them.

        Returns
        -------
        h : torch.Tensor of shape (N, feature_dim)
            Features of the query backbone, not normalised.
        """
        return self.backbone_q(x)

    def query_parameters(self):
        """Parameters trained by gradient."""
        yield from self.backbone_q.parameters()
        yield from self.projector_q.parameters()
        yield from self.predictor.parameters()

    def key_parameters(self):
        """Parameters of the key network (EMA only, never gradient)."""
        yield from self.backbone_k.parameters()
        yield from self.projector_k.parameters()

    def encode_query(self, x):
        """Unit-norm query projections ``z = f_q(x)``, with gradient.

        Parameters
        ----------
        x : torch.Tensor of shape (N, ...)
            A batch of (augmented) inputs.

        Returns
        -------
        z : torch.Tensor of shape (N, D)
            L2-normalised outputs of backbone, projector and, if any,
            predictor of the query network.
        """
        z = self.predictor(self.projector_q(self.backbone_q(x)))
        return F.normalize(z, dim=1)  # (N, D)

    @torch.no_grad()
    def encode_key(self, x):
        """Unit-norm key projections ``k = f_k(x)``, never with gradient.

        Parameters
        ----------
        x : torch.Tensor of shape (N, ...)
            A batch of (augmented) inputs.

        Returns
        -------
        k : torch.Tensor of shape (N, D)
            L2-normalised outputs of the key backbone and projector (no
            predictor), computed under ``no_grad``.
        """
        k = self.projector_k(self.backbone_k(x))
        return F.normalize(k, dim=1)  # (N, D)

    # -- losses ---------------------------------------------------------------
    def training_step(self, v1, v2, cluster_weight=0.0, *, encode_query=None, encode_key=None):
        """Loss of one batch of two views.

        Parameters
        ----------
        v1, v2 : torch.Tensor of shape (N, ...)
            Two augmented views of the same images.
        cluster_weight : float, default=0.0
            Weight ``lambda`` of the clustering term; 0 gives MoCo v2.
        encode_query, encode_key : callable, default=None
            Replacements for :meth:`encode_query` and :meth:`encode_key`
            with the same results (e.g. compiled, DistributedDataParallel or
            shuffled-BatchNorm versions); the method stays the same.

        Returns
        -------
        loss : torch.Tensor
            Scalar ``L_con + lambda * L_clu``.
        parts : dict of torch.Tensor
            Detached ``"contrastive"`` and ``"clustering"`` terms.
        keys : tuple of torch.Tensor
            ``(k1, k2)``, each ``(N, D)``, for the updates after the step
            (:meth:`enqueue`, :meth:`update_centroids`).
        """
        encode_query = encode_query or self.encode_query
        encode_key = encode_key or self.encode_key
        # keys first: they need no activations kept for backward, and run
        # faster before the query activations fill the memory
        k1, k2 = encode_key(v1), encode_key(v2)  # (N, D) each
        z1, z2 = encode_query(v1), encode_query(v2)  # (N, D) each
        return self.loss(z1, z2, k1, k2, cluster_weight)

    def loss(self, z1, z2, k1, k2, cluster_weight=0.0):
        """``L_con + lambda * L_clu`` of queries and keys (docs/method.rst, eq. 1-3).

        The queries of each view are contrasted with the keys of the other
        view, against the queue (or, with ``queue_size=0``, the other keys of
        the batch).

        Parameters
        ----------
        z1, z2 : torch.Tensor of shape (N, D)
            Unit-norm query projections of the two views, with gradient
            (:meth:`encode_query`).
        k1, k2 : torch.Tensor of shape (N, D)
            Unit-norm key projections of the same views (:meth:`encode_key`);
            ``k2`` is the positive of ``z1`` and ``k1`` that of ``z2``.
        cluster_weight : float, default=0.0
            Weight ``lambda`` of the clustering term; 0 gives MoCo v2 and
            leaves the centroids unread. Pass a positive weight only once
            the centroids are initialised.

        Returns
        -------
        loss : torch.Tensor
            Scalar ``L_con + lambda * L_clu``, in float32.
        parts : dict of torch.Tensor
            Detached ``"contrastive"`` and ``"clustering"`` terms (the
            latter 0 unless ``cluster_weight > 0``).
        keys : tuple of torch.Tensor
            ``(k1, k2)`` in float32, each ``(N, D)``, for the updates after
            the step (:meth:`enqueue`, :meth:`update_centroids`).
        """
        # no copy needed: the queue is only overwritten after backward()
        negatives = self.queue.keys if self.queue.keys.shape[0] else None
        l_con = 0.5 * (
            info_nce(z1, k2, negatives, self.temperature)
            + info_nce(z2, k1, negatives, self.temperature)
        )
        # the caller passes cluster_weight > 0 only once the centroids exist
        if cluster_weight > 0:
            l_clu = 0.5 * (
                self._cluster_term(z1, k2) + self._cluster_term(z2, k1)
            )
        else:
            l_clu = torch.zeros((), device=l_con.device)
        loss = l_con + cluster_weight * l_clu
        parts = {"contrastive": l_con.detach(), "clustering": l_clu.detach()}
        return loss, parts, (k1.float(), k2.float())

    def _cluster_term(self, z, k_other):
        term = self._term_against(z, k_other, self.centroids)
        if self._overclusters_on:
            # the mean over the two sets: the finer one shapes the embedding
            # without outweighing the K centroids predict uses
            term = 0.5 * (term + self._term_against(z, k_other, self.overclusters))
        return term

    def _term_against(self, z, k_other, centroids):
        # centroids and assignments carry no gradient: only z is pulled
        centroids = centroids.detach()
        a = self.assign(k_other, centroids)  # (N,)
        if self.cluster_loss == "proto":
            return proto_nce(z.float(), centroids, a, self.cluster_temperature)
        return cluster_pull(z.float(), centroids, a)

    def assign(self, keys, centroids=None):
        """Training-time assignments of keys to centroids.

        ``cluster_assign="sinkhorn"`` balances them over the given keys;
        ``"argmax"`` takes each key's most similar centroid.

        Parameters
        ----------
        keys : torch.Tensor of shape (N, D)
            Unit-norm key projections; cast to float32.
        centroids : torch.Tensor of shape (K, D) or None, default=None
            Unit-norm centroids; None uses the model's ``centroids``.

        Returns
        -------
        labels : torch.LongTensor of shape (N,)
            Index of the centroid assigned to each key.
        """
        centroids = self.centroids if centroids is None else centroids
        if self.cluster_assign == "sinkhorn":
            return sinkhorn_assign(keys.float(), centroids, self.sinkhorn_iterations,
                                   balance=self.cluster_balance)
        return assign_clusters(keys.float(), centroids)

    # -- explicit state updates -----------------------------------------------
    @torch.no_grad()
    def momentum_update(self, momentum):
        """EMA of the key network towards the query network.

        Parameters
        ----------
        momentum : float
            ``m`` in ``[0, 1]`` of ``theta_k <- m theta_k + (1 - m) theta_q``,
            applied to the backbone and projector parameters (not to the
            BatchNorm statistics); 1 leaves the key network unchanged.
        """
        ema_update(self.backbone_k, self.backbone_q, momentum)
        ema_update(self.projector_k, self.projector_q, momentum)

    @torch.no_grad()
    def enqueue(self, keys):
        """Push keys into the FIFO queue, over its oldest entries.

        Parameters
        ----------
        keys : torch.Tensor of shape (M, D)
            Key projections, stored detached in the queue's dtype; when ``M``
            exceeds the queue size only the last keys are kept. Nothing is
            stored with ``queue_size=0``.
        """
        self.queue.enqueue(keys)

    @torch.no_grad()
    def init_centroids(self, features, n_iter=30, *, broadcast=None):
        """Spherical k-means (k-means++ seeding) on key features.

        The training task passes the keys of the whole training set (one pass
        in eval mode) rather than the queue: right after warm-up the queue can
        still hold its random initial entries and stale keys. The centroids
        are then marked ready and every centroid's count of empty updates is
        reset. The over-clustering set, if any, is initialised after them
        (:meth:`init_overclusters`).

        Parameters
        ----------
        features : torch.Tensor of shape (M, D)
            Key features, ``M >= K``; only their direction matters (rows are
            L2-normalised before clustering).
        n_iter : int, default=30
            Maximum number of Lloyd iterations after the seeding.
        broadcast : callable, default=None
            ``broadcast(tensor)``, when given, overwrites the centroids in
            place with those of one source process, so that every process
            holds the same ones.
        """
        self._kmeans_into(self.centroids, features, n_iter, broadcast)
        self.centroids_ready.fill_(True)
        self.empty_steps.zero_()
        self.init_overclusters(features, n_iter, broadcast=broadcast)

    @torch.no_grad()
    def init_overclusters(self, features, n_iter=30, *, broadcast=None):
        """Spherical k-means of the over-clustering set on key features.

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
            As in :meth:`init_centroids`.

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
        self._overclusters_on = True
        return True

    def _kmeans_into(self, out, features, n_iter, broadcast):
        centroids, _ = spherical_kmeans(
            features.float(), out.shape[0], n_iter=n_iter, generator=self.generator,
        )
        centroids = centroids.contiguous()
        if broadcast is not None:
            broadcast(centroids)
        out.copy_(centroids)

    @torch.no_grad()
    def refine_centroids(self, features, n_iter, *, restarts=1):
        """Spherical k-means on ``features`` ``(M, D)``, started from the current centroids.

        Run at the end of training on the projections ``predict`` uses, so the
        centroids are a local optimum of k-means on the final embedding
        rather than a moving average of keys from earlier in training.
        ``restarts`` more runs start from k-means++ seeds (drawn from the
        model's generator); the centroids with the highest k-means objective
        (summed cosine similarity of each row to its centroid) are kept, so
        the result is never worse, by that objective, than the trained
        centroids refined or a fresh k-means. Lloyd steps stop early when the
        centroids no longer move; an empty cluster moves to the worst-fitting
        point.

        Parameters
        ----------
        features : torch.Tensor of shape (M, D)
            Projections of the training set (:meth:`project`); rows are
            L2-normalised before clustering.
        n_iter : int
            Maximum number of Lloyd iterations from each start.
        restarts : int, default=1
            Number of extra k-means++ starts, besides the current centroids;
            none when ``M < K``.

        Returns
        -------
        labels : LongTensor of shape (M,)
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
            # ties keep the earlier start: the trained centroids first
            if best_score is None or score > best_score:
                best, best_score = centroids, score
        self.centroids.copy_(best)
        return assign_clusters(x, best)

    @torch.no_grad()
    def update_centroids(self, keys, *, all_reduce=None):
        """Online update: ``M_k <- normalize(beta M_k + (1 - beta) mean(keys in k))``.

        Keys are assigned as in :meth:`assign`; a centroid that receives no
        key keeps its value. Also counts, per centroid, the consecutive
        updates without an assigned key; :meth:`reseed_dead_centroids` uses
        the count. A ready over-clustering set is updated the same way.

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
        self._update_set(self.centroids, self.empty_steps, keys, all_reduce)
        if self._overclusters_on:
            self._update_set(self.overclusters, self.overcluster_empty_steps, keys, all_reduce)

    def _update_set(self, centroids, empty_steps, keys, all_reduce):
        n_clusters = centroids.shape[0]
        a = self.assign(keys, centroids)  # (M,)
        # a fixed-length scatter, not bincount: bincount's output size depends
        # on the data, which reads the indices back to the host on a GPU
        counts = torch.zeros(n_clusters, dtype=torch.long, device=keys.device)
        counts.scatter_add_(0, a, torch.ones_like(a))  # (K,)
        sums = torch.zeros_like(centroids).index_add_(0, a, keys)  # (K, D)
        if all_reduce is not None:
            all_reduce(counts)
            all_reduce(sums)
        means = sums / counts.clamp_min(1).unsqueeze(1)
        beta = self.cluster_momentum
        updated = F.normalize(beta * centroids + (1 - beta) * means, dim=1)
        centroids.copy_(torch.where((counts > 0).unsqueeze(1), updated, centroids))
        empty_steps.add_(1).mul_(counts == 0)

    @torch.no_grad()
    def reseed_dead_centroids(self, min_empty_steps):
        """Move centroids empty for ``min_empty_steps`` updates onto random queue keys.

        Called once per epoch rather than per step: the random draw happens on
        the CPU generator, and doing it per step would cost a host round trip.
        Each moved centroid's count of empty updates is reset; with an empty
        queue (``queue_size=0``) nothing moves. A ready over-clustering set
        is re-seeded the same way, after the ``K`` centroids.

        Parameters
        ----------
        min_empty_steps : int
            Number of consecutive :meth:`update_centroids` calls without an
            assigned key after which a centroid counts as dead. At most one
            centroid per queue key moves (per set); the others wait for a
            later call.

        Returns
        -------
        n_reseeded : int
            Number of centroids moved, over both sets.
        """
        n = self._reseed_set(self.centroids, self.empty_steps, min_empty_steps)
        if self._overclusters_on:
            n += self._reseed_set(self.overclusters, self.overcluster_empty_steps,
                                  min_empty_steps)
        return n

    def _reseed_set(self, centroids, empty_steps, min_empty_steps):
        n_queue = self.queue.keys.shape[0]
        if n_queue == 0:
            return 0
        dead = (empty_steps >= min_empty_steps).nonzero().squeeze(1).cpu()  # (n_dead,)
        # one queue key per centroid at most; the rest wait for a later epoch
        dead = dead[:n_queue]
        if dead.numel():
            idx = torch.randperm(n_queue, generator=self.generator)[: dead.numel()]
            device = centroids.device
            centroids[dead.to(device)] = self.queue.keys[idx.to(device)].float()
            empty_steps[dead.to(device)] = 0
        return int(dead.numel())

    @torch.no_grad()
    def project(self, x):
        """Unit-norm projections of the query network, without gradient.

        The space the centroids live in (no predictor). Runs in whatever
        mode the model is in; call ``eval()`` first for batch-independent
        results.

        Parameters
        ----------
        x : torch.Tensor of shape (N, ...)
            A batch of inputs.

        Returns
        -------
        z : torch.Tensor of shape (N, D)
            L2-normalised projections, in float32.
        """
        return F.normalize(self.projector_q(self.backbone_q(x)).float(), dim=1)

    @torch.no_grad()
    def predict_clusters(self, x):
        """Index of the nearest centroid for each input.

        Parameters
        ----------
        x : torch.Tensor of shape (N, ...)
            A batch of inputs.

        Returns
        -------
        labels : torch.LongTensor of shape (N,)
            Index of the centroid most cosine-similar to each input's
            :meth:`project` output.
        """
        return assign_clusters(self.project(x), self.centroids)

"""The CueCo model: query/key encoders, key queue, centroids and one training step.

The forward pass only encodes. Everything that changes state besides the
optimiser (EMA of the key network, the queue, the centroids) is an explicit
method the training loop calls after the optimiser step, so nothing moves
behind the caller's back. The centroids and their updates are a
``CentroidBank`` (:mod:`skcueco.nn.centroids`).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .centroids import CentroidBank
from .heads import PredictionHead, ProjectionHead
from .losses import ASSIGNMENTS, assign_clusters, cluster_pull, info_nce, proto_nce
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
        and the online update): ``"argmax"``, the most similar centroid (the
        same as ``cluster_balance=0``), or ``"sinkhorn"``, assignments
        balanced over the batch as ``cluster_balance`` says.
        :meth:`predict_clusters` always uses the most similar centroid.
    sinkhorn_iterations : int, default=3
        Sinkhorn-Knopp iterations of balanced assignments.
    cluster_balance : float, default=1.0
        With ``cluster_assign="sinkhorn"``: how strictly the centroids'
        shares of a batch are balanced, in ``[0, 1]``. 1 gives every
        centroid an equal share, smaller values let groups keep more of
        their size (the KL-relaxed Sinkhorn-Knopp of
        :func:`~skcueco.nn.losses.sinkhorn_assign`), and 0 is the arg-max.
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

    Attributes
    ----------
    bank : CentroidBank
        The ``K`` centroids and the over-clustering set, with their
        assignment, initialisation, online update, re-seeding and refinement
        (:mod:`skcueco.nn.centroids`). Their buffers keep their names in the
        state dict (``centroids``, ``overclusters``, ...).
    step_labels : tuple of torch.LongTensor or None
        ``(labels of k1, labels of k2)``, each ``(N,)``: the clusters the
        last :meth:`loss` assigned its keys (the clusters the other view's
        queries are pulled towards); None when it had no clustering term.
        What :meth:`enqueue` stores beside the keys.

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
        if cluster_loss not in ("pull", "proto"):
            raise ValueError(f"cluster_loss must be 'pull' or 'proto', got {cluster_loss!r}.")
        if cluster_assign not in ASSIGNMENTS:
            raise ValueError(
                f"cluster_assign must be one of {ASSIGNMENTS}, got {cluster_assign!r}."
            )
        if isinstance(cluster_balance, bool) or not 0.0 <= cluster_balance <= 1.0:
            raise ValueError(f"cluster_balance must be in [0, 1], got {cluster_balance!r}.")
        self.temperature = temperature
        self.cluster_loss = cluster_loss
        self.cluster_temperature = cluster_temperature
        self.generator = generator

        # registered first, so its buffers come first, as when they were the model's own
        self.bank = CentroidBank(
            n_clusters, projection_dim, n_overclusters=n_overclusters,
            balance=0.0 if cluster_assign == "argmax" else cluster_balance,
            sinkhorn_iterations=sinkhorn_iterations, momentum=cluster_momentum,
            generator=generator,
        )
        self.backbone_q = backbone
        self.projector_q = ProjectionHead(feature_dim, hidden_dim, projection_dim)
        self.predictor = PredictionHead(projection_dim) if predictor else nn.Identity()
        self.backbone_k = copy.deepcopy(self.backbone_q)
        self.projector_k = copy.deepcopy(self.projector_q)
        for p in self.key_parameters():
            p.requires_grad_(False)
        self.queue = KeyQueue(queue_size, projection_dim, generator=generator)
        self.step_labels = None
        self._register_state_dict_hook(_bank_keys_unprefixed)

    # -- state dict: the bank's buffers keep the names they had as the model's
    # own ("centroids", not "bank.centroids"), so that files of every version
    # load; _bank_keys_unprefixed writes them so, this reads them back
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, _ in self.bank.named_buffers(recurse=False):
            if prefix + name in state_dict:
                state_dict[prefix + "bank." + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def centroids(self):
        """The ``K`` centroids ``(K, D)``, a buffer of ``bank``."""
        return self.bank.centroids

    @property
    def centroids_ready(self):
        """Whether the centroids are initialised (a boolean 0-d buffer)."""
        return self.bank.centroids_ready

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
    def training_step(self, v1, v2, cluster_weight=0.0, *, encoders=None,
                      drop_cluster_negatives=False, neighbour_positives=False):
        """Loss of one batch of two views.

        Parameters
        ----------
        v1, v2 : torch.Tensor of shape (N, ...)
            Two augmented views of the same images.
        cluster_weight : float, default=0.0
            Weight ``lambda`` of the clustering term; 0 gives MoCo v2.
        encoders : object, default=None
            What computes the projections: an object with ``encode_query``
            and ``encode_key`` methods giving the same results as the
            model's own (e.g. compiled, DistributedDataParallel or
            shuffled-BatchNorm versions: ``TrainingEncoders`` of
            ``skcueco.training.parallel``); None: the model itself. The method stays the same.
        drop_cluster_negatives : bool, default=False
            Leave out of each query's negatives those of its cluster
            (:meth:`loss`).
        neighbour_positives : bool, default=False
            With ``drop_cluster_negatives``, each query's positive is the
            most similar queue key of its cluster (:meth:`loss`).

        Returns
        -------
        loss : torch.Tensor
            Scalar ``L_con + lambda * L_clu``.
        parts : dict of torch.Tensor
            Detached ``"contrastive"`` and ``"clustering"`` terms and the
            former's ``"contrastive_chance"`` (:meth:`loss`).
        keys : tuple of torch.Tensor
            ``(k1, k2)``, each ``(N, D)``, for the updates after the step
            (:meth:`enqueue`, ``bank.update``).
        """
        encoders = self if encoders is None else encoders
        # keys first: they need no activations kept for backward, and run
        # faster before the query activations fill the memory
        k1, k2 = encoders.encode_key(v1), encoders.encode_key(v2)  # (N, D) each
        z1, z2 = encoders.encode_query(v1), encoders.encode_query(v2)  # (N, D) each
        return self.loss(z1, z2, k1, k2, cluster_weight,
                         drop_cluster_negatives=drop_cluster_negatives,
                         neighbour_positives=neighbour_positives)

    def loss(self, z1, z2, k1, k2, cluster_weight=0.0, *, drop_cluster_negatives=False,
             neighbour_positives=False):
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
        drop_cluster_negatives : bool, default=False
            With ``cluster_weight > 0``, leave out of each query's
            negatives those of its cluster: the cluster the clustering term
            pulls it towards (that of its positive key), against the label
            each queue key was stored with (``queue.labels``: its own
            assignment by the same rule when it was queued, see
            :meth:`enqueue` and :meth:`label_queue`); with
            ``queue_size=0``, the other keys of the batch, assigned now
            (docs/method.rst, "Same-cluster negatives"). Without the
            clustering term it changes nothing: MoCo v2 has no clusters.
        neighbour_positives : bool, default=False
            With ``drop_cluster_negatives`` and a queue: the positive of each
            query is the queue key most similar to its positive key, when
            that key was stored with the query's cluster, and its positive
            key otherwise (docs/method.rst, "Neighbours as positives"). The
            key chosen is one of the negatives left out, so it is never both.
            The clustering term keeps the query's own positive key.

        Returns
        -------
        loss : torch.Tensor
            Scalar ``L_con + lambda * L_clu``, in float32.
        parts : dict of torch.Tensor
            Detached ``"contrastive"`` and ``"clustering"`` terms (the
            latter 0 unless ``cluster_weight > 0``), and
            ``"contrastive_chance"``: the contrastive term's value were
            every projection the same, the mean over the queries of
            ``log(1 + n)`` for the ``n`` negatives each is contrasted with
            (what the collapse check compares the term with).
        keys : tuple of torch.Tensor
            ``(k1, k2)`` in float32, each ``(N, D)``, for the updates after
            the step (:meth:`enqueue`, ``bank.update``).
        """
        # no copy needed: the queue is only overwritten after backward()
        negatives = self.queue.keys if self.queue.keys.shape[0] else None
        # the caller passes cluster_weight > 0 only once the centroids exist
        a1 = a2 = queue_labels = None  # the clusters z1 and z2 are pulled towards
        self.step_labels = None
        if cluster_weight > 0:
            with torch.no_grad():
                a1, a2 = self.bank.assign_main(k2), self.bank.assign_main(k1)
            # k1's cluster is the one z2 is pulled towards, and k2's z1's
            self.step_labels = (a2, a1)
        labels = drop_cluster_negatives and cluster_weight > 0
        if labels and negatives is not None:
            queue_labels = self.queue.labels
        p1, p2 = k2, k1  # the positives of z1 and z2
        if neighbour_positives and queue_labels is not None:
            p1 = self._neighbour_positive(k2, a1)
            p2 = self._neighbour_positive(k1, a2)
        l_con = 0.5 * (
            info_nce(z1, p1, negatives, self.temperature,
                     query_labels=a1 if labels else None, negative_labels=queue_labels)
            + info_nce(z2, p2, negatives, self.temperature,
                       query_labels=a2 if labels else None, negative_labels=queue_labels)
        )
        if cluster_weight > 0:
            l_clu = 0.5 * (
                self._cluster_term(z1, k2, a1) + self._cluster_term(z2, k1, a2)
            )
        else:
            l_clu = torch.zeros((), device=l_con.device)
        loss = l_con + cluster_weight * l_clu
        with torch.no_grad():
            chance = 0.5 * (self._chance(negatives, a1 if labels else None, z1)
                            + self._chance(negatives, a2 if labels else None, z2))
        parts = {"contrastive": l_con.detach(), "clustering": l_clu.detach(),
                 "contrastive_chance": chance}
        return loss, parts, (k1.float(), k2.float())

    @torch.no_grad()
    def _neighbour_positive(self, key, assigned):
        # the queue key most similar to each positive key, where it was
        # stored with the cluster the query is pulled towards (so it is one
        # of the negatives left out); the positive key itself elsewhere
        queue = self.queue.keys.float()  # (Q, D)
        nearest = (key.float() @ queue.T).argmax(dim=1)  # (N,)
        same = (self.queue.labels[nearest] == assigned)[:, None]  # (N, 1)
        return torch.where(same, queue[nearest], key.float()).to(key.dtype)

    def _chance(self, negatives, query_labels, z):
        # InfoNCE's value were every projection the same: the mean over the
        # queries of log(1 + the negatives each is contrasted with)
        if query_labels is None:
            count = negatives.shape[0] if negatives is not None else z.shape[0] - 1
            return torch.full((), count, dtype=torch.float32, device=z.device).log1p()
        others = self.queue.labels if negatives is not None else query_labels
        kept = (others[None, :] != query_labels[:, None]).sum(dim=1)  # (N,)
        return kept.float().log1p().mean()

    def _cluster_term(self, z, k_other, assigned=None):
        # assigned: the cluster of k_other (bank.assign_main), which z is pulled towards
        if assigned is None:
            assigned = self.bank.assign_main(k_other)
        term = self._term_against(z, self.bank.centroids, assigned)
        if self.bank.overclusters_on:
            # the mean over the two sets: the finer one shapes the embedding
            # without outweighing the K centroids predict uses
            overclusters = self.bank.overclusters
            term = 0.5 * (term + self._term_against(
                z, overclusters, self.bank.assign(k_other, overclusters.detach())))
        return term

    def _term_against(self, z, centroids, a):
        # centroids and assignments (a, (N,)) carry no gradient: only z is pulled
        centroids = centroids.detach()
        if self.cluster_loss == "proto":
            return proto_nce(z.float(), centroids, a, self.cluster_temperature)
        return cluster_pull(z.float(), centroids, a)

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
    def enqueue(self, keys, labels=None):
        """Push keys into the FIFO queue, over its oldest entries.

        Parameters
        ----------
        keys : torch.Tensor of shape (M, D)
            Key projections, stored detached in the queue's dtype; when ``M``
            exceeds the queue size only the last keys are kept. Nothing is
            stored with ``queue_size=0``.
        labels : torch.LongTensor of shape (M,), default=None
            The cluster of each key (``step_labels`` of the step that
            computed them), stored beside it for
            ``drop_cluster_negatives``; None: unlabelled.
        """
        self.queue.enqueue(keys, labels)

    @torch.no_grad()
    def label_queue(self):
        """Assign every queued key to a cluster now, by :meth:`CentroidBank.assign_main`.

        The labels ``drop_cluster_negatives`` compares with: needed when
        the queue was filled without them, or when the centroids or the
        graph targets have been replaced (the clusters' numbering may
        change); afterwards :meth:`enqueue` keeps them up to date.
        """
        if self.queue.size:
            self.queue.labels.copy_(self.bank.assign_main(self.queue.keys))

    # -- centroids: the bank's verbs the fitting code calls --------------------
    @torch.no_grad()
    def init_centroids(self, features, n_iter=30, *, broadcast=None):
        """Spherical k-means (k-means++ seeding) of both sets on key features.

        The training task passes the keys of the whole training set (one pass
        in eval mode) rather than the queue: right after warm-up the queue can
        still hold its random initial entries and stale keys
        (``CentroidBank.initialise``).

        Parameters
        ----------
        features : torch.Tensor of shape (M, D)
            Key features, ``M >= K``; only their direction matters.
        n_iter : int, default=30
            Maximum number of Lloyd iterations after the seeding.
        broadcast : callable, default=None
            ``broadcast(tensor)``, when given, overwrites the centroids in
            place with those of one source process.
        """
        self.bank.initialise(features, n_iter, broadcast=broadcast)

    @torch.no_grad()
    def refine_centroids(self, features, n_iter, *, restarts=1):
        """Spherical k-means on ``features`` ``(M, D)``, started from the current centroids.

        Run at the end of training on the projections ``predict`` uses, so the
        centroids are a local optimum of k-means on the final embedding
        rather than a moving average of keys from earlier in training;
        ``restarts`` more runs start from k-means++ seeds and the best by the
        k-means objective is kept (``CentroidBank.refine``).

        Parameters
        ----------
        features : torch.Tensor of shape (M, D)
            Projections of the training set (:meth:`project`).
        n_iter : int
            Maximum number of Lloyd iterations from each start.
        restarts : int, default=1
            Number of extra k-means++ starts, besides the current centroids.

        Returns
        -------
        labels : LongTensor of shape (M,)
            Index of the most similar refined centroid of each row.
        """
        return self.bank.refine(features, n_iter, restarts=restarts)

    # -- inference --------------------------------------------------------------
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


def _bank_keys_unprefixed(model, state_dict, prefix, local_metadata):
    # state-dict hook: "bank.centroids" -> "centroids", in place and in order
    inner = prefix + "bank."
    items = [(prefix + k[len(inner):] if k.startswith(inner) else k, v)
             for k, v in state_dict.items()]
    state_dict.clear()
    state_dict.update(items)

"""The CueCo training task: what the engine calls each step and epoch.

It turns a batch of compact rows into two views, asks the model for the loss,
and performs the explicit state updates after the optimiser step (EMA of the
key network, enqueue, centroids), following docs/method.rst. Pure PyTorch:
no scikit-learn here.
"""

import torch

from .distributed import all_gather_cat, all_reduce_, broadcast_
from ..nn.momentum import MomentumSchedule


class CueCoTask:
    """One CueCo training run for :class:`~skcueco.training.engine.Trainer`.

    Parameters
    ----------
    model : CueCoModel
    preprocess : torch.nn.Module
        Compact rows to float model input.
    augmentation : callable
        ``augmentation(x, generator)`` returns one random view of ``x``.
    generator : torch.Generator
        Source of the augmentation randomness, on the training device.
    total_steps : int
        Optimiser steps in the whole run (for the momentum schedule).
    key_momentum : float
        Starting EMA momentum, raised to ``final_momentum`` along a cosine.
    cluster_weight : float
        ``lambda`` once the warm-up is over.
    cluster_warmup : int
        Epochs trained with ``lambda = 0`` before the centroids exist.
    cluster_ramp : int, default=0
        Epochs after the warm-up over which ``lambda`` rises linearly to
        ``cluster_weight``: the ``j``-th epoch after the warm-up (from 0)
        trains with ``cluster_weight * min(1, (j + 1) / (cluster_ramp + 1))``.
        0 switches the full weight on at once.
    cluster_update : {"online", "epoch"}
    key_features : callable
        ``key_features()`` returns key projections ``(n_samples, D)`` of the
        whole training set (used to initialise, or refit, the centroids).
    reseed_after : int
        Steps without an assigned key after which a centroid is re-seeded.
    loader_generator : torch.Generator, default=None
        The loader's shuffling generator, saved and restored with the task so
        a resumed run sees the same batches.
    channels_last : bool, default=False
        Feed the views in channels-last memory format (faster convolutions
        on GPUs).
    sampler : torch.utils.data.DistributedSampler, default=None
        Reseeded every epoch (``set_epoch``) in distributed training.
    encoders : TrainingEncoders, default=None
        How queries and keys are computed (compiled, DDP, shuffle-BN); None
        uses the model's own encoders.
    final_momentum : float, default=1.0
        EMA momentum at the last step (``key_momentum`` keeps it constant).
    step_offset : int, default=0
        Global step at which this run's momentum schedule starts (a run that
        continues an earlier one).
    graph_targets : callable, default=None
        ``graph_targets() -> (centers, prototypes, owners)``: a partition of
        the key projections of the training set, or of the subset the graph
        read-out of ``predict`` reads (docs/method.rst). Given, it is
        computed at the start of the first epoch with the clustering term on
        and every ``graph_refresh`` epochs after it, and sets the ``K``
        centroids and how keys are assigned to them
        (:meth:`~skcueco.nn.centroids.CentroidBank.set_targets`).
    graph_refresh : int, default=1
        Epochs between two computations of ``graph_targets``. The targets in
        use are part of the task's state, so a resumed run goes on with them.
    drop_negatives_from : int or None, default=None
        The epoch from which the negatives of each query's cluster are left
        out of the contrastive term, while the clustering term is on
        (``drop_cluster_negatives`` of
        :meth:`~skcueco.nn.model.CueCoModel.training_step`); None: never.
    neighbour_positives : bool, default=False
        While the negatives of a query's cluster are left out, its positive
        is the most similar queue key of that cluster
        (``neighbour_positives`` of
        :meth:`~skcueco.nn.model.CueCoModel.training_step`).
    """

    def __init__(self, model, preprocess, augmentation, generator, *, total_steps,
                 key_momentum, cluster_weight, cluster_warmup, cluster_update,
                 key_features, reseed_after, loader_generator=None,
                 channels_last=False, sampler=None, encoders=None, final_momentum=1.0,
                 step_offset=0, cluster_ramp=0, graph_targets=None, graph_refresh=1,
                 drop_negatives_from=None, neighbour_positives=False):
        self.model = model
        self.preprocess = preprocess
        self.augmentation = augmentation
        self.generator = generator
        self.momentum = MomentumSchedule(total_steps, base=key_momentum, final=final_momentum)
        self.cluster_weight = cluster_weight
        self.cluster_warmup = cluster_warmup
        self.cluster_ramp = cluster_ramp
        self.cluster_update = cluster_update
        self.key_features = key_features
        self.reseed_after = reseed_after
        self.loader_generator = loader_generator
        self.channels_last = channels_last
        self.sampler = sampler
        self.encoders = encoders
        self.current_weight = 0.0
        self.step_offset = step_offset
        self.graph_targets = graph_targets
        self.graph_refresh = graph_refresh
        self.drop_negatives_from = drop_negatives_from
        self.neighbour_positives = neighbour_positives
        self.n_reseeded = 0
        self._keys = self._labels = None
        # a state written before the over-clustering set existed: its set is
        # initialised once, at the first epoch with the clustering term on
        self._overclusters_tried = False

    @property
    def centroids_ready(self):
        return bool(self.model.bank.centroids_ready)

    def uses_clusters(self, epoch):
        return self.cluster_weight > 0 and epoch >= self.cluster_warmup

    def init_centroids(self):
        # every process must hold the same centroids: rank 0's k-means wins
        self.model.bank.initialise(self.key_features(), broadcast=broadcast_)

    def on_epoch_begin(self, epoch):
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.model.train()
        if self.uses_clusters(epoch):
            if self.cluster_update == "epoch" or not self.centroids_ready:
                self.init_centroids()
            elif self.model.bank.wants_overclusters and not self._overclusters_tried:
                self.model.bank.initialise_overclusters(self.key_features(), broadcast=broadcast_)
            self._overclusters_tried = True
            if self.graph_targets is not None and self.refreshes_targets(epoch):
                with torch.no_grad():
                    self.model.bank.set_targets(*self.graph_targets())
            if self.drops_negatives(epoch):
                # the queue's labels, once an epoch: the clusters may have
                # been renumbered since its keys were stored; the steps keep
                # them up to date afterwards
                self.model.label_queue()
        self.current_weight = self.weight_at(epoch)

    def refreshes_targets(self, epoch):
        """Whether the graph targets are computed at the start of ``epoch``.

        At the first epoch with the clustering term on, every
        ``graph_refresh`` epochs after it, and whenever the bank holds no
        targets (a run resumed from a state written without them). With
        ``cluster_update="epoch"``, at every epoch: its k-means has just
        replaced the centroids, whose order must be the targets' again.
        """
        return (self.model.bank.target_owners is None
                or self.cluster_update == "epoch"
                or (epoch - self.cluster_warmup) % self.graph_refresh == 0)

    def weight_at(self, epoch):
        """``lambda`` of ``epoch``: 0 in the warm-up, then a linear ramp to ``cluster_weight``."""
        if not self.uses_clusters(epoch):
            return 0.0
        ramp = min(1.0, (epoch - self.cluster_warmup + 1) / (self.cluster_ramp + 1))
        return self.cluster_weight * ramp

    def training_step(self, batch, epoch):
        x = self.preprocess(batch)
        v1 = self.augmentation(x, self.generator)
        v2 = self.augmentation(x, self.generator)
        if self.channels_last:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        drop = self.drops_negatives(epoch)
        loss, parts, self._keys = self.model.training_step(
            v1, v2, self.current_weight, encoders=self.encoders, drop_cluster_negatives=drop,
            neighbour_positives=drop and self.neighbour_positives)
        self._labels = self.model.step_labels if drop else None
        return loss, parts

    def drops_negatives(self, epoch):
        """Whether the steps of ``epoch`` leave out the negatives of a query's cluster."""
        return (self.drop_negatives_from is not None and epoch >= self.drop_negatives_from
                and self.uses_clusters(epoch))

    def after_optimizer_step(self, step):
        self.model.momentum_update(self.momentum(step - self.step_offset))
        keys = torch.cat(self._keys)  # (2N, D)
        # with the same-cluster negatives left out, each key's cluster is queued beside it
        labels = None if self._labels is None else all_gather_cat(torch.cat(self._labels))
        self._keys = self._labels = None
        if self.current_weight > 0 and self.cluster_update == "online":
            # the keys of all processes move the centroids, identically everywhere
            self.model.bank.update(keys, all_reduce=all_reduce_)
        # every rank's queue receives the keys of all ranks
        self.model.enqueue(all_gather_cat(keys), labels)

    def on_epoch_end(self, epoch):
        if self.current_weight > 0 and self.cluster_update == "online":
            # dead centroids move onto random keys of the queue
            self.n_reseeded += self.model.bank.reseed(self.model.queue.keys, self.reseed_after)
        return {"cluster_weight": self.current_weight}

    # -- state ------------------------------------------------------------------
    def state_dict(self):
        """Model weights, queue, centroids and random streams (CPU tensors)."""
        state = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "augmentation_rng": self.generator.get_state(),
            "n_reseeded": self.n_reseeded,
        }
        if self.model.generator is not None:
            state["model_rng"] = self.model.generator.get_state()
        if self.loader_generator is not None:
            state["loader_rng"] = self.loader_generator.get_state()
        if self.encoders is not None:
            state.update(self.encoders.state_dict())
        if self.model.bank.target_owners is not None:
            # the graph targets last computed: a resumed run trains towards
            # them until their next refresh, as the uninterrupted run does
            state["graph_targets"] = {
                "prototypes": self.model.bank.target_prototypes.detach().cpu(),
                "owners": self.model.bank.target_owners.detach().cpu(),
            }
        return state

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["augmentation_rng"])
        self.n_reseeded = state["n_reseeded"]
        if "model_rng" in state and self.model.generator is not None:
            self.model.generator.set_state(state["model_rng"])
        if "loader_rng" in state and self.loader_generator is not None:
            self.loader_generator.set_state(state["loader_rng"])
        if self.encoders is not None:
            self.encoders.load_state_dict(state)
        if "graph_targets" in state and self.graph_targets is not None:
            self.model.bank.restore_targets(state["graph_targets"]["prototypes"],
                                            state["graph_targets"]["owners"])

"""The settings of a training run, grouped once, and how a run starts.

The estimator's public parameters stay a flat list (scikit-learn's idiom:
``clone``, ``set_params`` and ``GridSearchCV`` reach each one). Training reads
them as four frozen groups, built in one place, :meth:`RunSpec.from_params`,
the only mapping from public names to the names training uses:

- :class:`ModelSpec`: the networks and the contrastive term;
- :class:`ClusterSpec`: the centroids and the clustering term;
- :class:`OptimSpec`: batches, epochs and the optimiser;
- :class:`RuntimeSpec`: where and how fast the run computes; it does not
  change what is trained, so a checkpoint is never compared on it.

:class:`Start` says how a run begins: fresh, resumed from a checkpoint, or
continuing a fitted model (``warm_start``, ``partial_fit``).
"""

import numbers
from dataclasses import dataclass

import torch

from . import checkpoint


@dataclass(frozen=True)
class ModelSpec:
    """The networks and the contrastive term (docs/method.rst)."""

    backbone: object
    projection_dim: int
    hidden_dim: int
    queue_size: object
    temperature: float
    key_momentum: float
    augmentation: object


@dataclass(frozen=True)
class ClusterSpec:
    """The centroids and the clustering term (docs/method.rst)."""

    n_clusters: int
    weight: float
    warmup: object
    ramp: object
    balance: float
    """0 assigns each key to its nearest centroid; 1 gives every centroid an
    equal share of each batch (Sinkhorn-Knopp); between, a relaxed balance."""
    overclustering: int
    refine: int
    graph: int
    """Neighbours per image in the graph that sets the clusters at the end (0: off)."""
    targets: str
    """``"centroids"``: keys are assigned to the centroids; ``"graph"``: to
    the clusters of the graph of the key projections, read every
    ``GRAPH_REFRESH_EPOCHS`` epochs."""
    update: str
    loss: str
    temperature: float
    momentum: float
    negatives: str
    """``"keep"``: every queue key is a negative; ``"drop"``: from
    ``DROP_NEGATIVES_FRACTION`` of the run on, those of the query's cluster
    are left out of the contrastive term."""
    positives: str
    """``"view"``: a query's positive is the key of its other view;
    ``"neighbour"``: while the negatives of its cluster are left out, the
    most similar queue key of that cluster."""


@dataclass(frozen=True)
class OptimSpec:
    """Batches, epochs and the optimiser."""

    batch_size: object
    max_epochs: int
    lr: object
    weight_decay: float
    optimizer: str


@dataclass(frozen=True)
class RuntimeSpec:
    """Where and how fast the run computes."""

    amp: object
    num_workers: int
    channels_last: object
    compile: object
    distributed_bn: str
    device: object


# public parameter -> (group, field): the one place public names are mapped
PARAMETERS = {
    "backbone": ("model", "backbone"),
    "projection_dim": ("model", "projection_dim"),
    "hidden_dim": ("model", "hidden_dim"),
    "queue_size": ("model", "queue_size"),
    "temperature": ("model", "temperature"),
    "key_momentum": ("model", "key_momentum"),
    "augmentation": ("model", "augmentation"),
    "n_clusters": ("clustering", "n_clusters"),
    "cluster_weight": ("clustering", "weight"),
    "cluster_warmup": ("clustering", "warmup"),
    "cluster_ramp": ("clustering", "ramp"),
    "cluster_balance": ("clustering", "balance"),
    "overclustering": ("clustering", "overclustering"),
    "refine_centroids": ("clustering", "refine"),
    "cluster_graph": ("clustering", "graph"),
    "cluster_targets": ("clustering", "targets"),
    "cluster_update": ("clustering", "update"),
    "cluster_loss": ("clustering", "loss"),
    "cluster_temperature": ("clustering", "temperature"),
    "cluster_momentum": ("clustering", "momentum"),
    "cluster_negatives": ("clustering", "negatives"),
    "cluster_positives": ("clustering", "positives"),
    "batch_size": ("optim", "batch_size"),
    "max_epochs": ("optim", "max_epochs"),
    "lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"),
    "optimizer": ("optim", "optimizer"),
    "amp": ("runtime", "amp"),
    "num_workers": ("runtime", "num_workers"),
    "channels_last": ("runtime", "channels_last"),
    "compile": ("runtime", "compile"),
    "distributed_bn": ("runtime", "distributed_bn"),
    "device": ("runtime", "device"),
}
GROUPS = {"model": ModelSpec, "clustering": ClusterSpec, "optim": OptimSpec,
          "runtime": RuntimeSpec}
# settings that may differ between a checkpoint and the run resuming it:
# max_epochs may grow, and what is read out after training is not part of it
# (cluster_graph is, with cluster_targets="graph": it then shapes training)
RESUMABLE = frozenset({"max_epochs", "refine_centroids", "cluster_graph"})


@dataclass(frozen=True)
class RunSpec:
    """The settings of a run, in the four groups."""

    model: ModelSpec
    clustering: ClusterSpec
    optim: OptimSpec
    runtime: RuntimeSpec

    @classmethod
    def from_params(cls, params):
        """The groups from the estimator's ``get_params(deep=False)``.

        The deprecated ``cluster_assign="argmax"`` is ``cluster_balance=0``;
        ``cluster_targets="auto"`` is ``"graph"`` with ``cluster_graph > 0``,
        else ``"centroids"``.
        """
        values = {group: {} for group in GROUPS}
        for name, (group, field) in PARAMETERS.items():
            values[group][field] = params[name]
        if params.get("cluster_assign") == "argmax":
            values["clustering"]["balance"] = 0.0
        if values["clustering"]["targets"] == "auto":
            values["clustering"]["targets"] = "graph" if params["cluster_graph"] > 0 else "centroids"
        return cls(**{group: GROUPS[group](**kw) for group, kw in values.items()})

    def record(self):
        """The settings that define what is trained, as plain data by public name.

        Checkpoints store it; a run resumes one only with the same record
        (:func:`~skcueco.training.checkpoint.check_checkpoint_fits`). The
        settings of ``RESUMABLE`` are left out, except ``cluster_graph``
        when the graph's clusters are the training targets.
        """
        resumable = RESUMABLE
        if self.clustering.targets == "graph":
            resumable = RESUMABLE - {"cluster_graph"}
        return {name: _plain(getattr(getattr(self, group), field))
                for name, (group, field) in sorted(PARAMETERS.items())
                if group != "runtime" and name not in resumable}


def _plain(value):
    """``value`` as plain data for a record (modules and callables by name)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.nn.Module):
        return f"<module {type(value).__qualname__}>"
    return f"<{getattr(value, '__qualname__', type(value).__qualname__)}>"


@dataclass(frozen=True)
class Start:
    """How a run starts.

    Use the constructors: :meth:`fresh`, :meth:`resume`, :meth:`warm`,
    :meth:`partial`.
    """

    state: dict = None
    """A training state to load (a checkpoint, or an earlier fit's)."""
    preprocess: object = None
    """The earlier fit's input conversion, when continuing one."""
    resume: bool = False
    """Resume ``state`` exactly, its schedule included (same run)."""
    one_epoch: bool = False
    """``partial_fit``: one epoch at constant learning rate and momentum."""

    @classmethod
    def fresh(cls):
        """A new run of ``max_epochs``."""
        return cls()

    @classmethod
    def from_checkpoint(cls, state):
        """Resume the run that wrote ``state`` exactly where it stopped."""
        return cls(state=state, resume=True)

    @classmethod
    def warm(cls, state, preprocess):
        """``max_epochs`` more epochs from a fitted model, on a new schedule without warm-up."""
        return cls(state=state, preprocess=preprocess)

    @classmethod
    def partial(cls, state=None, preprocess=None):
        """One more epoch (from a fitted model when given)."""
        return cls(state=state, preprocess=preprocess, one_epoch=True)

    @property
    def continues(self):
        """Whether the run continues an earlier fit (not a fresh or resumed run)."""
        return self.state is not None and not self.resume

    def done_epochs(self):
        """Epochs the continued model has trained."""
        return checkpoint.epoch(self.state) if self.continues else 0

    def step_offset(self):
        """Optimiser steps the continued model has taken."""
        return checkpoint.global_step(self.state) if self.continues else 0

    def queue_size(self):
        """The continued model's queue length (None for a new model)."""
        return checkpoint.queue_size(self.state) if self.continues else None

    def embedding_stats(self):
        """Feature statistics of the ``partial_fit`` calls so far (None if none)."""
        return checkpoint.embedding_stats(self.state) if self.continues else None


"""Pure-PyTorch building blocks of CueCo: heads, queue, losses, EMA, k-means."""

from .heads import PredictionHead, ProjectionHead
from .kmeans import spherical_kmeans
from .losses import assign_clusters, cluster_pull, info_nce, proto_nce
from .momentum import MomentumSchedule, cosine_momentum, ema_update
from .queue import KeyQueue

from .model import CueCoModel

__all__ = [
    "CueCoModel",
    "KeyQueue",
    "MomentumSchedule",
    "PredictionHead",
    "ProjectionHead",
    "assign_clusters",
    "cluster_pull",
    "cosine_momentum",
    "ema_update",
    "info_nce",
    "proto_nce",
    "spherical_kmeans",
]

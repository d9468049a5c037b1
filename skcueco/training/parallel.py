"""How the model runs during training: SyncBN, channels-last, compile, DDP, shuffle-BN.

None of this changes the method (:mod:`skcueco.nn.model`); it changes how the
query and key projections are computed. :class:`TrainingEncoders` is what
the training step encodes with (``CueCoModel.training_step(...,
encoders=...)``): an ``encode_query`` and an ``encode_key`` with the same
results as the model's own, run through ``torch.compile``,
DistributedDataParallel or MoCo's shuffled BatchNorm as asked.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_gather_cat, broadcast_, get_rank, get_world_size


def prepare_model(model, *, device, sync_bn=False, channels_last=False):
    """Move ``model`` to ``device`` and convert it for this training run.

    Parameters
    ----------
    model : CueCoModel
    device : torch.device
    sync_bn : bool, default=False
        Replace BatchNorm by SyncBatchNorm (statistics over the global batch
        of all processes; CUDA only).
    channels_last : bool, default=False
        Channels-last memory format for convolution weights.

    Returns
    -------
    model : CueCoModel
        The same model, or a converted copy for ``sync_bn``.
    """
    if sync_bn:
        if device.type != "cuda":
            raise ValueError(
                "distributed_bn='sync' needs CUDA GPUs (PyTorch's SyncBatchNorm "
                "does not run on the CPU); use distributed_bn='shuffle'."
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class _QueryNet(nn.Module):
    """The query path as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, backbone, projector, predictor):
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor

    def forward(self, x):
        return self.predictor(self.projector(self.backbone(x)))


class TrainingEncoders:
    """Query and key encoders of a :class:`~skcueco.nn.CueCoModel` for training.

    Parameters
    ----------
    model : CueCoModel
        Already on its device (see :func:`prepare_model`).
    compile : bool or str, default=False
        Run both backbones through ``torch.compile`` (a string names the
        backend). The model's own modules stay uncompiled, so its state dict
        and the published encoder are plain.
    distributed : bool, default=False
        Wrap the query path in DistributedDataParallel (a process group must
        exist).
    shuffle_bn : bool, default=True
        With ``distributed``: MoCo's shuffled BatchNorm for the key network,
        so BatchNorm statistics cannot leak which key belongs to which query.
    split_bn : int, default=0
        In a single process: encode the keys of a shuffled batch in this many
        groups, each with its own BatchNorm statistics (the single-process
        stand-in for shuffled BatchNorm of MoCo's CIFAR demo). 0 or 1: one
        group, the whole batch. Groups keep at least 2 images each.
    seed : int, default=0
        Seed of the shuffle permutations, the same on every process.
    """

    def __init__(self, model, *, compile=False, distributed=False, shuffle_bn=True,
                 split_bn=0, seed=0):
        self.model = model
        kwargs = {"backend": compile} if isinstance(compile, str) else {}
        self._backbone_q = torch.compile(model.backbone_q, **kwargs) if compile else model.backbone_q
        self._backbone_k = torch.compile(model.backbone_k, **kwargs) if compile else model.backbone_k
        self._ddp = None
        self.shuffle_bn = distributed and shuffle_bn
        self.split_bn = 0 if distributed else int(split_bn)
        self.generator = None
        device = model.centroids.device
        if distributed:
            self._ddp = nn.parallel.DistributedDataParallel(
                _QueryNet(self._backbone_q, model.projector_q, model.predictor),
                device_ids=[device.index] if device.type == "cuda" else None,
            )
        if self.shuffle_bn or self.split_bn > 1:
            # drawn on the device, so no permutation is copied from the host
            self.generator = torch.Generator(device=device).manual_seed(seed)

    def encode_query(self, x):
        """Unit-norm query projections ``(N, D)``, as ``model.encode_query``."""
        if self._ddp is not None:
            z = self._ddp(x)
        else:
            m = self.model
            z = m.predictor(m.projector_q(self._backbone_q(x)))
        return F.normalize(z, dim=1)  # (N, D)

    @torch.no_grad()
    def encode_key(self, x):
        """Unit-norm key projections ``(N, D)``, as ``model.encode_key``."""
        if self.shuffle_bn:
            return self._encode_key_shuffled(x)
        if self.split_bn > 1 and x.shape[0] >= 4:
            return self._encode_key_split(x)
        return F.normalize(self.model.projector_k(self._backbone_k(x)), dim=1)  # (N, D)

    @torch.no_grad()
    def _encode_key_shuffled(self, x):
        # every rank draws the same permutation (identical generators),
        # encodes its slice of the shuffled global batch, and takes back the
        # keys of its own images
        world, rank, n = get_world_size(), get_rank(), x.shape[0]
        x_all = all_gather_cat(x)  # (world * N, ...)
        perm = torch.randperm(world * n, generator=self.generator, device=x.device)
        mine = perm.view(world, n)[rank]
        k = self.model.projector_k(self._backbone_k(x_all[mine]))
        k_all = all_gather_cat(F.normalize(k, dim=1))  # (world * N, D), shuffled order
        return k_all[torch.argsort(perm).view(world, n)[rank]]  # (N, D)

    @torch.no_grad()
    def _encode_key_split(self, x):
        # shuffled groups with their own BatchNorm statistics: a key's batch
        # statistics come from other images than its query's
        n = x.shape[0]
        perm = torch.randperm(n, generator=self.generator, device=x.device)
        groups = torch.tensor_split(x[perm], min(self.split_bn, n // 2))
        k = torch.cat([self.model.projector_k(self._backbone_k(g)) for g in groups])
        return F.normalize(k, dim=1)[torch.argsort(perm)]  # (N, D)

    def state_dict(self):
        """Random state of the shuffle permutations (empty without shuffle-BN)."""
        return {} if self.generator is None else {"shuffle_rng": self.generator.get_state()}

    def load_state_dict(self, state):
        if self.generator is not None and "shuffle_rng" in state:
            self.generator.set_state(state["shuffle_rng"])

    def close(self):
        """Drop the DistributedDataParallel wrapper while the process group lives
        (a wrapper destroyed after the group can abort the process)."""
        self._ddp = None


@torch.no_grad()
def sync_buffers(model):
    """Copy rank 0's buffers (BatchNorm statistics, queue, centroids) to all ranks."""
    for buffer in model.buffers():
        broadcast_(buffer)

"""Batches from compact arrays, and their conversion to float model input.

The training set stays in the caller's dtype (uint8 images stay uint8: a
50,000 x 3 x 32 x 32 set is 150 MB, not 600 MB as float32). Rows are gathered
per batch, moved to the device in their compact dtype, and converted there.
"""

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)


class ArrayBatches(Dataset):
    """Map-style dataset over the rows of a 2-D array, fetched a batch at a time.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Any numeric dtype; never copied as a whole.
    """

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return self.X.shape[0]

    def __getitem__(self, indices):
        # DataLoader hands us a whole list of indices (batch_size=None below):
        # one fancy-index gather per batch instead of one Python call per row
        return rows_tensor(self.X[np.asarray(indices)])


def rows_tensor(block):
    """A block of compact rows as a contiguous tensor (bool becomes uint8)."""
    block = np.ascontiguousarray(block, dtype=np.uint8 if block.dtype == np.bool_ else None)
    if not block.flags.writeable:
        # a slice of a read-only (e.g. memory-mapped) array: torch cannot wrap
        # it without warning, and one batch is cheap to copy
        block = block.copy()
    return torch.from_numpy(block)


def make_loader(X, *, batch_size, shuffle, generator=None, drop_last=False,
                num_workers=0, pin_memory=False, shard=None):
    """DataLoader yielding compact ``(B, n_features)`` tensors.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    batch_size : int
    shuffle : bool
        Reshuffle every epoch with ``generator``.
    generator : torch.Generator, default=None
        CPU generator for the shuffling; fixes the order for a given seed.
    drop_last : bool, default=False
    num_workers : int, default=0
    pin_memory : bool, default=False
    shard : tuple of (int, int, int), default=None
        ``(world_size, rank, seed)``: this process reads its share of a
        :class:`~torch.utils.data.DistributedSampler` seeded with ``seed``
        (reshuffled per epoch by ``loader.sampler.sampler.set_epoch``).

    Returns
    -------
    loader : torch.utils.data.DataLoader
    """
    dataset = ArrayBatches(X)
    if shard is not None:
        world_size, rank, seed = shard
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                     shuffle=shuffle, seed=seed, drop_last=True)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size, drop_last)
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # every iterator draws a worker base seed from this generator; without
        # one it would come from (and advance) torch's global RNG
        generator=torch.Generator(),
    )


@torch.no_grad()
def encode(fn, preprocess, modules, X, batch_size, device, fixed_batch=False):
    """Apply ``fn`` batch by batch in eval mode; returns a float32 tensor on the CPU.

    With ``fixed_batch`` every batch is zero-padded to ``batch_size`` rows: CPU
    matrix kernels round differently for different row counts, and a constant
    shape makes each sample's result independent of the others in ``X``.

    On a GPU, input batches go through pinned memory so their copies overlap
    the computation, and results are gathered on the device and copied back
    once per ~64 MB, not once per batch (each copy back waits for the GPU).
    """
    gpu = device.type == "cuda"
    # restore every submodule's own mode afterwards (not one flag for all)
    modes = [(m, m.training) for m in modules.modules()]
    modules.eval()
    out, pending, pending_start = None, [], 0

    def flush():
        nonlocal pending, pending_start
        if pending:
            block = torch.cat(pending).cpu()
            out[pending_start:pending_start + block.shape[0]] = block
            pending_start += block.shape[0]
            pending = []

    try:
        for start in range(0, X.shape[0], batch_size):
            rows = rows_tensor(X[start:start + batch_size])
            n = rows.shape[0]
            if fixed_batch and n < batch_size:
                rows = torch.cat([rows, rows.new_zeros((batch_size - n, *rows.shape[1:]))])
            if gpu:
                rows = rows.pin_memory()
            features = fn(preprocess(rows.to(device, non_blocking=gpu)))[:n].float()
            if out is None:
                out = torch.empty((X.shape[0], *features.shape[1:]), dtype=torch.float32)
                chunk_rows = max(1, (64 << 20) // max(1, features[0].numel() * 4))
            pending.append(features)
            if not gpu or sum(p.shape[0] for p in pending) >= chunk_rows:
                flush()
        flush()
    finally:
        for m, mode in modes:
            m.training = mode
    return out

"""Batches from compact arrays, and their conversion to float model input.

The training set stays in the caller's dtype (uint8 images stay uint8: a
50,000 x 3 x 32 x 32 set is 150 MB, not 600 MB as float32). Rows are gathered
per batch, moved to the device in their compact dtype, and converted there.
"""

import weakref

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
    X : ndarray or ImageSource of shape (n_samples, n_features)
        An :class:`~skcueco.ImageSource` with ``cache="auto"`` keeps its
        rows from now on, so that only the first epoch decodes images.
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
    keep_decoded = getattr(X, "_keep_decoded", None)
    if keep_decoded is not None:
        # an ImageSource read every epoch keeps its rows once decoded
        keep_decoded()
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


# Rows per inference batch in ``transform``/``predict``; separate from the
# training ``batch_size`` so that a model trained with large batches neither
# pads a single image to thousands of rows nor changes its outputs with it.
INFERENCE_ROWS = 256

# Verdicts of `_row_shape_ok`, per module tree, so each row count is checked
# once per set of weights and threads, not once per call.
_ROW_CHECKS = weakref.WeakKeyDictionary()

# Submodules and tensors of each module tree `encode` runs, listed once: walking
# a tree costs about as much as a forward of one small image.
_TREES = weakref.WeakKeyDictionary()


def _tree(modules):
    """``(submodules, tensors)`` of a module or a tuple of modules, cached.

    A fitted model's tree does not change (fitting again builds new modules);
    its tensors' values and storage may, which the callers read each time.
    The cache holds weak references only, so it keeps no model alive.
    """
    if isinstance(modules, torch.nn.Module):
        modules = (modules,)
    subs, tensors = [], []
    for module in modules:
        refs = _TREES.get(module)
        s = t = None
        if refs is not None:
            s, t = [r() for r in refs[0]], [r() for r in refs[1]]
        if s is None or any(x is None for x in s) or any(x is None for x in t):
            s, t = list(module.modules()), [*module.parameters(), *module.buffers()]
            _TREES[module] = ([weakref.ref(x) for x in s], [weakref.ref(x) for x in t])
        subs += s
        tensors += t
    return subs, tensors


def _probe_rows(X, n, generator):
    """``n`` random rows of ``X``'s width and dtype (values in its usual range)."""
    shape = (n, *X.shape[1:])
    if X.dtype == np.uint8 or X.dtype == np.bool_:
        return torch.randint(0, 256 if X.dtype == np.uint8 else 2, shape,
                             generator=generator, dtype=torch.uint8)
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(
        rows_tensor(X[:1]).dtype)


def _row_checks(fn, preprocess, modules, X, device, key, rows):
    """The probe of ``fn`` on one random batch of ``rows`` rows, and verdicts.

    CPU kernels may pick a different algorithm (and summation order) for a
    different number of rows, so batch independence would require padding
    every batch to ``rows``. Which algorithm runs depends on the shapes, not on
    the values, so comparing one random batch of ``rows`` rows with its first
    ``n`` rows shows whether ``n`` rows can skip the padding. The probe runs
    once per set of weights, thread count and input layout.
    """
    subs, tensors = _tree(modules)
    # in-place updates bump the version, moves and loads change the storage
    state = tuple((t._version, t.data_ptr()) for t in tensors)
    # keyed on the first module that holds weights: `modules` may be a
    # tuple made per call, its members live as long as the fitted model
    anchor = next((m for m in subs if m._parameters or m._buffers), subs[0])
    checks = _ROW_CHECKS.setdefault(anchor, {}).setdefault(key, {})
    tag = (rows, torch.get_num_threads(), X.shape[1:], X.dtype.str, state)
    if checks.get("tag") != tag:
        generator = torch.Generator().manual_seed(0)
        probe = _probe_rows(X, rows, generator)
        full = fn(preprocess(probe.to(device))).float()
        checks.clear()
        # outputs all alike (say all zero) would hide any rounding difference
        checks.update(tag=tag, probe=probe, full=full,
                      informative=bool(full.ne(full.flatten()[0]).any()))
    return checks


def _row_shape_ok(fn, preprocess, checks, device, n_rows):
    """Whether ``fn`` on ``n_rows`` rows gives, bitwise, the rows of a full batch."""
    if n_rows not in checks:
        part = fn(preprocess(checks["probe"][:n_rows].to(device))).float()
        checks[n_rows] = checks["informative"] and torch.equal(part, checks["full"][:n_rows])
    return checks[n_rows]


def _tail_rows(fn, preprocess, modules, X, device, key, rows, n):
    """Row count to pad a last batch of ``n < rows`` rows to, on the CPU."""
    if key is None:
        return rows
    checks = _row_checks(fn, preprocess, modules, X, device, key, rows)
    if ("pad", n) not in checks:
        candidates = [n] + [2 ** i for i in range(1, rows.bit_length()) if n < 2 ** i < rows]
        checks["pad", n] = next(
            (m for m in candidates if _row_shape_ok(fn, preprocess, checks, device, m)), rows)
    return checks["pad", n]


@torch.no_grad()
def encode(fn, preprocess, modules, X, batch_size, device, fixed_batch=False, check_key=None):
    """Apply ``fn`` batch by batch in eval mode; returns a float32 tensor on the CPU.

    Parameters
    ----------
    fn : callable
        Model input batch to output batch.
    preprocess : callable
        Compact rows to model input (see :class:`~skcueco.data.preprocess.Preprocess`).
    modules : torch.nn.Module or tuple of torch.nn.Module
        The modules ``fn`` uses; put in eval mode for the call.
    X : ndarray of shape (n_samples, n_features)
    batch_size : int
        Rows per batch.
    device : torch.device
    fixed_batch : bool, default=False
        Make each sample's output independent of the other samples in ``X``
        (bitwise) on the CPU, where matrix kernels may round differently for
        different row counts: every batch has ``batch_size`` rows, the last
        one zero-padded up to a row count shown to give the same rows as a
        full batch (see ``check_key``), else to ``batch_size``.
    check_key : hashable or None, default=None
        Names ``fn`` among the functions run on ``modules``. With
        ``fixed_batch``, the last batch of ``n`` rows is padded to the first
        of ``n, 2, 4, ...`` rows for which a random probe batch, run once per
        set of weights, gives bitwise the rows of a full batch. None: always
        pad to ``batch_size``.

    Returns
    -------
    out : Tensor of shape (n_samples, ...), float32, on the CPU

    Notes
    -----
    On a GPU, input batches go through pinned memory so their copies overlap
    the computation, and results are gathered on the device and copied back
    once per ~64 MB, not once per batch (each copy back waits for the GPU).
    """
    gpu = device.type == "cuda"
    fixed_batch = fixed_batch and not gpu
    # restore every submodule's own mode afterwards (not one flag for all)
    subs = _tree(modules)[0]
    modes = [m.training for m in subs]
    if any(modes):
        for module in (modules,) if isinstance(modules, torch.nn.Module) else modules:
            module.eval()
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
                pad_to = _tail_rows(fn, preprocess, modules, X, device, check_key,
                                    batch_size, n)
                if pad_to > n:
                    rows = torch.cat([rows, rows.new_zeros((pad_to - n, *rows.shape[1:]))])
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
        if any(modes):
            for m, mode in zip(subs, modes):
                m.training = mode
    return out

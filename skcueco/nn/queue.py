"""FIFO queue of key features used as InfoNCE negatives."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KeyQueue"]

UNLABELLED = -1
"""Label of a queued key written without one; it matches no cluster."""


class KeyQueue(nn.Module):
    """Ring buffer of L2-normalised key features.

    The queue and its write pointer are registered buffers, so they follow the
    module across devices and are saved in ``state_dict``. Updates are explicit
    calls to :meth:`enqueue`, never a side effect of ``forward``.

    Parameters
    ----------
    size : int
        Number of keys held. ``0`` gives an empty queue whose :meth:`enqueue`
        does nothing (the model then uses in-batch negatives).
    dim : int
        Feature dimension.
    generator : torch.Generator or None, default=None
        Source of the random unit rows the queue starts with. If None, a fresh
        non-deterministically seeded generator is used, leaving torch's global
        RNG untouched.

    Attributes
    ----------
    keys : Tensor of shape (size, dim)
        Stored keys. Row order is the ring-buffer layout; the oldest key is at
        ``ptr``.
    ptr : Tensor of shape ()
        Long tensor, index of the next row to overwrite.
    labels : Tensor of shape (size,)
        Long tensor, the cluster each stored key was assigned when it was
        written (``enqueue(keys, labels)``), or ``UNLABELLED`` (-1): rows
        written without labels and the random rows the queue starts with.

    Examples
    --------
    >>> import torch
    >>> queue = KeyQueue(4, 2, generator=torch.Generator().manual_seed(0))
    >>> queue.enqueue(torch.eye(2))
    >>> queue.keys[:2]
    tensor([[1., 0.],
            [0., 1.]])
    >>> int(queue.ptr)
    2
    """

    def __init__(self, size, dim, generator=None):
        super().__init__()
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative int, got {size!r}.")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}.")
        self.size = size
        self.dim = dim
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        # Random unit rows rather than zeros: zero negatives would all have the
        # same similarity 0 and make the first steps' loss degenerate.
        keys = torch.randn(size, dim, generator=generator, device=generator.device)
        self.register_buffer("keys", F.normalize(keys, dim=1).cpu())
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), UNLABELLED, dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # states written before the labels existed: every row unlabelled
        state_dict.setdefault(prefix + "labels", torch.full_like(self.labels, UNLABELLED))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def enqueue(self, keys, labels=None):
        """Write a batch of keys over the oldest entries.

        Parameters
        ----------
        keys : Tensor of shape (n_samples, dim)
            New keys, stored detached and cast to the queue's dtype. Any batch
            size works: writes wrap around the end of the buffer, and when
            ``n_samples > size`` only the last ``size`` keys are kept, exactly
            as if they had been enqueued one at a time.
        labels : LongTensor of shape (n_samples,), default=None
            The cluster of each key, stored beside it; None stores
            ``UNLABELLED``.
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(
                f"keys must have shape (n_samples, {self.dim}), got {tuple(keys.shape)}."
            )
        if labels is not None and labels.shape != keys.shape[:1]:
            raise ValueError(f"labels must have shape ({keys.shape[0]},), "
                             f"got {tuple(labels.shape)}.")
        n = keys.shape[0]
        if self.size == 0 or n == 0:
            return
        # Keys older than the last `size` would be overwritten within this
        # call anyway; dropping them keeps the scatter indices unique, which
        # GPU index_copy_ needs to be deterministic.
        kept = keys[-self.size :]  # (n_kept, D)
        n_kept = kept.shape[0]
        # Index arithmetic stays on the device so no host sync is needed.
        start = (self.ptr + (n - n_kept)) % self.size  # ()
        offsets = torch.arange(n_kept, device=self.keys.device)  # (n_kept,)
        idx = (start + offsets) % self.size  # (n_kept,)
        self.keys.index_copy_(0, idx, kept.detach().to(self.keys))
        if labels is None:
            self.labels.index_fill_(0, idx, UNLABELLED)
        else:
            self.labels.index_copy_(0, idx, labels[-self.size:].to(self.labels))
        self.ptr.copy_((self.ptr + n) % self.size)

    def ordered(self):
        """Return the keys from oldest to newest.

        Returns
        -------
        keys : Tensor of shape (size, dim)
            ``keys`` rolled so that row 0 is the oldest entry.
        """
        if self.size == 0:
            return self.keys.clone()
        idx = (self.ptr + torch.arange(self.size, device=self.keys.device)) % self.size
        return self.keys[idx]  # (size, D)

    def __len__(self):
        return self.size

    def extra_repr(self):
        return f"size={self.size}, dim={self.dim}"

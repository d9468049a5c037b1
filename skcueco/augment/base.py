"""Base of the batched augmentations: the interface, random draws, checks.

Every random draw comes from the ``generator`` argument, never from torch's
global RNG; draws happen on ``generator.device`` and are moved to the batch's
device, so a CPU generator can drive augmentations of a GPU batch. The design
is described in :mod:`skcueco.augment`.
"""

import inspect
import math
import numbers

import torch


def _check_generator(generator):
    if generator is None:
        # A fresh generator instead of torch's global RNG: library code never
        # touches global random state.
        generator = torch.Generator()
        generator.seed()
    elif not isinstance(generator, torch.Generator):
        raise TypeError(
            "generator must be a torch.Generator or None, "
            f"got {type(generator).__name__}."
        )
    return generator


def _check_batch(x, ndim, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != ndim:
        raise ValueError(
            f"{name} expects a {ndim}-d batch, got shape {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {x.dtype}.")


def _draw(sample, generator, shape, device):
    # Drawn where the generator lives, then moved: a CPU generator works for
    # GPU batches. Drawing into pinned memory lets that copy run
    # asynchronously; a copy from pageable memory would make the host wait
    # for the GPU's queue to drain, on every training step.
    pin = generator.device.type == "cpu" and device.type == "cuda"
    out = sample(shape, generator=generator, device=generator.device, pin_memory=pin)
    return out.to(device, non_blocking=pin)


def _rand(generator, shape, device):
    return _draw(torch.rand, generator, shape, device)


def _randn(generator, shape, device):
    return _draw(torch.randn, generator, shape, device)


def _check_range(name, value, low=None, high=None, ordered_pair=False, positive=False):
    values = value if ordered_pair else (value,)
    if ordered_pair and (not isinstance(value, (tuple, list)) or len(value) != 2):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}.")
    for v in values:
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or math.isnan(v):
            raise ValueError(f"{name} must hold real numbers, got {value!r}.")
        if (low is not None and v < low) or (high is not None and v > high):
            raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}.")
        if positive and v <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}.")
    if ordered_pair and value[0] > value[1]:
        raise ValueError(f"{name} must satisfy low <= high, got {value!r}.")



class Augmentation:
    """Base class of batched view augmentations.

    Subclasses implement ``__call__(x, generator)``: return a new tensor with
    the shape and dtype of ``x``, drawing all randomness from ``generator``
    and leaving ``x`` unmodified. :func:`make_augmentation` returns instances
    of this class unchanged; any other callable is wrapped in
    :class:`CallableAugmentation`.
    """

    def __call__(self, x, generator=None):
        raise NotImplementedError

    def __repr__(self):
        names = [
            p for p in inspect.signature(type(self).__init__).parameters if p != "self"
        ]
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in names)
        return f"{type(self).__name__}({args})"



class NoAugmentation(Augmentation):
    """Identity augmentation: both views are copies of the input.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 3)
    >>> torch.equal(NoAugmentation()(x), x)
    True
    """

    def __call__(self, x, generator=None):
        """Return a copy of ``x`` (``generator`` is ignored)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        return x.clone()


class CallableAugmentation(Augmentation):
    """Wrap a user function ``func(x) -> Tensor`` as an augmentation.

    Parameters
    ----------
    func : callable
        Called on the whole batch without a generator, so its randomness is
        its own business (and the ``random_state`` of the estimator does not
        make it reproducible). It must return a tensor of the input's shape.
        It receives a copy of the batch, so it may work in place.

    Examples
    --------
    >>> import torch
    >>> aug = CallableAugmentation(lambda x: x.flip(-1))
    >>> aug(torch.arange(3.0).view(1, 3))
    tensor([[2., 1., 0.]])
    """

    def __init__(self, func):
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}.")
        self.func = func

    def __call__(self, x, generator=None):
        """Apply ``func`` to a copy of ``x`` and check its output."""
        # A copy, so a function that works in place cannot corrupt the batch
        # from which the second view is drawn.
        out = self.func(x.clone())
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                "The callable passed as augmentation must return a torch.Tensor, "
                f"got {type(out).__name__}."
            )
        if out.shape != x.shape:
            raise ValueError(
                "The callable passed as augmentation must keep the batch shape: "
                f"got {tuple(out.shape)} for input {tuple(x.shape)}."
            )
        return out


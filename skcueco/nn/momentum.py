"""Exponential moving average of the key network and its momentum schedule."""

import math

import torch

__all__ = ["ema_update", "cosine_momentum", "MomentumSchedule"]


@torch.no_grad()
def ema_update(target, source, momentum):
    """Move the parameters of ``target`` towards those of ``source``.

    Parameters
    ----------
    target : torch.nn.Module
        Key network, updated in place: ``theta_k <- m theta_k + (1 - m) theta_q``.
    source : torch.nn.Module
        Query network with the same parameter structure; left unchanged.
    momentum : float
        ``m`` in ``[0, 1]``. ``1`` keeps ``target``, ``0`` copies ``source``.

    Notes
    -----
    Buffers (BatchNorm running statistics) are not averaged: as in MoCo, the
    key network keeps statistics of the batches it has itself seen.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}.")
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    if len(target_params) != len(source_params):
        raise ValueError(
            "target and source must have the same parameters, got "
            f"{len(target_params)} and {len(source_params)} tensors."
        )
    if not target_params:
        return
    # One fused kernel launch per device instead of one per tensor. lerp_
    # computes end - (end - start) * (1 - w) for w >= 0.5, so m=0 copies
    # the source exactly.
    torch._foreach_lerp_(target_params, source_params, 1.0 - momentum)


def cosine_momentum(step, total_steps, base=0.99, final=1.0):
    """Momentum at ``step`` of a cosine ramp from ``base`` to ``final``.

    Parameters
    ----------
    step : int
        Current optimiser step, counted from 0. Steps past ``total_steps``
        give ``final``.
    total_steps : int
        Step at which the ramp reaches ``final``.
    base : float, default=0.99
        Momentum at step 0.
    final : float, default=1.0
        Momentum at ``step = total_steps``.

    Returns
    -------
    momentum : float
        ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``.

    Examples
    --------
    >>> cosine_momentum(0, 100), cosine_momentum(100, 100)
    (0.99, 1.0)
    """
    if total_steps <= 0:
        return float(final)
    progress = min(max(step, 0), total_steps) / total_steps
    return float(final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0)


class MomentumSchedule:
    """Cosine momentum schedule for the key network (BYOL / MoCo v3 style).

    Parameters
    ----------
    total_steps : int
        Number of optimiser steps over which momentum goes from ``base`` to
        ``final``.
    base : float, default=0.99
        Momentum at step 0.
    final : float, default=1.0
        Momentum at the last step.

    See Also
    --------
    cosine_momentum : The formula this class evaluates.

    Examples
    --------
    >>> schedule = MomentumSchedule(10, base=0.9)
    >>> schedule(0), schedule(10)
    (0.9, 1.0)
    """

    def __init__(self, total_steps, base=0.99, final=1.0):
        self.total_steps = total_steps
        self.base = base
        self.final = final

    def __call__(self, step):
        """Return the momentum at ``step``."""
        return cosine_momentum(step, self.total_steps, self.base, self.final)

    def __repr__(self):
        return (
            f"{type(self).__name__}(total_steps={self.total_steps}, "
            f"base={self.base}, final={self.final})"
        )

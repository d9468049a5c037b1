"""MLP heads put on top of the backbone: projector and optional predictor."""

import numbers

from torch import nn

__all__ = ["ProjectionHead", "PredictionHead"]


def _check_dims(**dims):
    for name, value in dims.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


class ProjectionHead(nn.Sequential):
    """Projector ``Linear -> BatchNorm1d -> ReLU -> Linear`` (MoCo v2 / SimCLR).

    Parameters
    ----------
    in_dim : int
        Dimension of the backbone feature ``h``.
    hidden_dim : int, default=2048
        Width of the hidden layer.
    out_dim : int, default=128
        Dimension ``D`` of the projection used by the losses.

    Notes
    -----
    The output is not normalised: the model L2-normalises it before any loss.
    BatchNorm needs more than one sample per batch in training mode.

    Examples
    --------
    >>> import torch
    >>> head = ProjectionHead(512, hidden_dim=64, out_dim=16)
    >>> head(torch.randn(8, 512, generator=torch.Generator().manual_seed(0))).shape
    torch.Size([8, 16])
    """

    def __init__(self, in_dim, hidden_dim=2048, out_dim=128):
        _check_dims(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim


class PredictionHead(ProjectionHead):
    """Predictor ``Linear -> BatchNorm1d -> ReLU -> Linear`` from ``dim`` to ``dim``.

    An optional extra MLP on the query side only (BYOL / MoCo v3); the
    asymmetry it adds between query and key branches can stabilise training.

    Parameters
    ----------
    dim : int
        Projection dimension ``D``, both input and output.
    hidden_dim : int, default=512
        Width of the hidden layer.
    """

    def __init__(self, dim, hidden_dim=512):
        _check_dims(dim=dim, hidden_dim=hidden_dim)
        super().__init__(dim, hidden_dim=hidden_dim, out_dim=dim)

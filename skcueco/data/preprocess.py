"""Compact rows to float model input, and the statistics that define it.

uint8 images are divided by 255, other images already in [0, 1] are kept,
anything else is min-max scaled with the training range; vectors are
standardised. The conversion runs on the device, per batch.
"""

import numpy as np
import torch
from torch import nn


class Preprocess(nn.Module):
    """Compact flattened rows to float model input, on the rows' device.

    Images become ``(B, C, H, W)`` in [0, 1] (``(x - offset) * scale``);
    vectors are standardised with the training mean and standard deviation.

    Parameters
    ----------
    spec : InputSpec
    offset : float or ndarray
        Subtracted first (per feature for vectors).
    scale : float or ndarray
        Multiplied after the offset (per feature for vectors).
    """

    def __init__(self, spec, offset, scale):
        super().__init__()
        self.kind = spec.kind
        self.shape = tuple(spec.shape)
        self.channels_last = spec.channels_last
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, rows):
        x = (rows.float() - self.offset) * self.scale  # (B, d)
        if self.kind == "vector":
            return x
        c, h, w = self.shape
        if self.channels_last:
            return x.view(-1, h, w, c).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        return x.view(-1, c, h, w)


def input_statistics(X, spec, chunk_size=4096):
    """Offset and scale that :class:`Preprocess` applies, from the training data.

    Images: uint8 is divided by 255; other data already in [0, 1] is kept;
    anything else is min-max scaled to [0, 1] with the training range.
    Vectors: per-feature mean and 1 / standard deviation (constant features
    get scale 1). Computed in chunks so no float copy of ``X`` is made.

    Returns
    -------
    offset, scale : float or ndarray of shape (n_features,)
    """
    if spec.kind == "image":
        if X.dtype == np.uint8:
            return 0.0, 1.0 / 255.0
        lo, hi = float(X.min()), float(X.max())
        if lo >= 0.0 and hi <= 1.0:
            return 0.0, 1.0
        offset = min(lo, 0.0)
        return offset, 1.0 / max(hi - offset, 1e-12)
    n = X.shape[0]
    total = np.zeros(X.shape[1])
    total_sq = np.zeros(X.shape[1])
    for start in range(0, n, chunk_size):
        chunk = X[start:start + chunk_size].astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += (chunk ** 2).sum(axis=0)
    mean = total / n
    var = np.maximum(total_sq / n - mean ** 2, 0.0)
    std = np.sqrt(var)
    # constant features: scale 1 rather than a division by zero
    constant = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
    scale = 1.0 / np.where(constant, 1.0, std)
    return mean.astype(np.float32), scale.astype(np.float32)


def relayout(preprocess, spec):
    """``preprocess`` for the same images stored in another memory layout."""
    return Preprocess(spec, preprocess.offset, preprocess.scale)

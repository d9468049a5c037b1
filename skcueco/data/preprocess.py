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
    output_channels_last : bool, default=False
        Return images in the channels-last memory format (same shape and
        values), the layout a channels-last model consumes without a
        conversion. Rows stored ``H, W, C`` are then returned as a strided
        view, with no copy at all.
    """

    def __init__(self, spec, offset, scale, output_channels_last=False):
        super().__init__()
        self.kind = spec.kind
        self.shape = tuple(spec.shape)
        self.channels_last = spec.channels_last
        self.output_channels_last = bool(output_channels_last)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, rows):
        x = (rows.float() - self.offset) * self.scale  # (B, d)
        if self.kind == "vector":
            return x
        c, h, w = self.shape
        if self.channels_last:
            x = x.view(-1, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last strides
            return x if self.output_channels_last else x.contiguous()
        x = x.view(-1, c, h, w)  # (B, C, H, W)
        return x.contiguous(memory_format=torch.channels_last) if self.output_channels_last else x


def _check_span(span, lo, hi, feature=None):
    """Refuse values whose centring (``x - offset``) overflows float32."""
    if float(span) > float(np.finfo(np.float32).max):
        where = "X" if feature is None else f"Feature {feature} of X"
        raise ValueError(
            f"{where} spans [{lo:.3g}, {hi:.3g}], a range wider than float32 holds "
            "(about 3.4e38): centring or scaling it in float32 would overflow to "
            "infinity. Rescale X."
        )


def input_statistics(X, spec, chunk_size=4096):
    """Offset and scale that :class:`Preprocess` applies, from the training data.

    Images: uint8 is divided by 255; other data already in [0, 1] is kept;
    anything else is min-max scaled to [0, 1] with the training range.
    Vectors: per-feature mean and 1 / standard deviation (constant features
    get scale 1). Computed in chunks so no float copy of ``X`` is made.

    Returns
    -------
    offset, scale : float or ndarray of shape (n_features,)

    Raises
    ------
    ValueError
        If ``x - offset`` would overflow float32, where :class:`Preprocess`
        computes it (values spread over more than about 3.4e38).
    """
    if spec.kind == "image":
        if X.dtype == np.uint8:
            return 0.0, 1.0 / 255.0
        lo, hi = float(X.min()), float(X.max())
        if lo >= 0.0 and hi <= 1.0:
            return 0.0, 1.0
        offset = min(lo, 0.0)
        _check_span(hi - offset, lo, hi)
        return offset, 1.0 / max(hi - offset, 1e-12)
    n = X.shape[0]
    total = np.zeros(X.shape[1])
    total_sq = np.zeros(X.shape[1])
    lo = np.full(X.shape[1], np.inf)
    hi = np.full(X.shape[1], -np.inf)
    for start in range(0, n, chunk_size):
        chunk = X[start:start + chunk_size].astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += (chunk ** 2).sum(axis=0)
        np.minimum(lo, chunk.min(axis=0), out=lo)
        np.maximum(hi, chunk.max(axis=0), out=hi)
    mean = total / n
    span = np.maximum(hi - mean, mean - lo)
    worst = int(np.argmax(span))
    _check_span(span[worst], lo[worst], hi[worst], feature=worst)
    var = np.maximum(total_sq / n - mean ** 2, 0.0)
    std = np.sqrt(var)
    # constant features: scale 1 rather than a division by zero
    constant = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
    scale = 1.0 / np.where(constant, 1.0, std)
    return mean.astype(np.float32), scale.astype(np.float32)


def relayout(preprocess, spec, output_channels_last=None):
    """``preprocess`` for the same images stored in another memory layout.

    ``output_channels_last`` None keeps the output layout of ``preprocess``.
    """
    if output_channels_last is None:
        output_channels_last = getattr(preprocess, "output_channels_last", False)
    return Preprocess(spec, preprocess.offset, preprocess.scale,
                      output_channels_last=output_channels_last)

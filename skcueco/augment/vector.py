"""Gaussian noise and feature masking for feature vectors."""


from .base import Augmentation, _check_batch, _check_generator, _check_range, _rand, _randn


class VectorAugmentation(Augmentation):
    """Gaussian noise and random feature masking for feature vectors.

    Parameters
    ----------
    noise_std : float, default=0.1
        Standard deviation of the additive Gaussian noise, in the units of the
        features (which are usually standardised).
    mask_p : float, default=0.2
        Probability that each feature of each sample is set to 0. A sample
        whose features would all be masked keeps them all.

    Examples
    --------
    >>> import torch
    >>> aug = VectorAugmentation(noise_std=0.0, mask_p=0.5)
    >>> views = aug(torch.ones(2, 4), torch.Generator().manual_seed(0))
    >>> views.shape
    torch.Size([2, 4])
    """

    def __init__(self, noise_std=0.1, mask_p=0.2):
        _check_range("noise_std", noise_std, 0.0)
        _check_range("mask_p", mask_p, 0.0, 1.0)
        self.noise_std = noise_std
        self.mask_p = mask_p

    def __call__(self, x, generator=None):
        """Return one random view of every sample.

        Parameters
        ----------
        x : Tensor of shape (n_samples, n_features)
            Float features, on any device. Not modified.
        generator : torch.Generator or None, default=None
            Source of all random draws. None uses a fresh, non-deterministically
            seeded generator.

        Returns
        -------
        views : Tensor of shape (n_samples, n_features)
            Same dtype and device as ``x``.
        """
        _check_batch(x, 2, "VectorAugmentation")
        generator = _check_generator(generator)
        y = x.clone()
        if self.noise_std > 0:
            y += self.noise_std * _randn(generator, x.shape, x.device).to(x.dtype)
        if self.mask_p > 0:
            keep = _rand(generator, x.shape, x.device) >= self.mask_p  # (N, d)
            # An all-zero sample carries no signal to contrast; keep it whole.
            keep |= ~keep.any(dim=1, keepdim=True)
            y *= keep
        return y


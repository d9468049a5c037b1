"""Batched view augmentations with per-image randomness.

CueCo compares two random views of every training image. The augmentations in
this module take a whole batch ``x`` on whatever device it lives on (CPU or
GPU) and return a new batch of the same shape and dtype in which **each image
gets its own random parameters**.

torchvision's v2 transforms accept batched tensors too, but they draw *one*
set of parameters per call, so every image of a batch would get the same crop,
flip and colour change. The transforms here are therefore written with torch
primitives:

- random resized crop, horizontal flip and a small affine are fused into one
  per-image 2x3 matrix and applied with a single ``affine_grid`` /
  ``grid_sample`` call per batch;
- brightness, contrast, saturation, hue (a rotation in YIQ space) and
  grayscale are fused into one per-image 3x3 colour matrix plus offset,
  applied with one batched matmul;
- Gaussian blur is a separable grouped convolution with one kernel per image.

No Python loop runs over images. Every random draw comes from the
``generator`` argument, never from torch's global RNG. Draws happen on
``generator.device`` and are moved to ``x.device``, so a CPU generator can
drive augmentations of a GPU batch.

An augmentation is any :class:`Augmentation`: called as
``aug(x, generator)``, it returns a new tensor and never modifies ``x``.
"""

from .base import Augmentation, CallableAugmentation, NoAugmentation
from .image import ImageAugmentation
from .presets import grayscale_augmentation, make_augmentation, rgb_augmentation
from .vector import VectorAugmentation

__all__ = [
    "Augmentation",
    "ImageAugmentation",
    "VectorAugmentation",
    "NoAugmentation",
    "CallableAugmentation",
    "rgb_augmentation",
    "grayscale_augmentation",
    "make_augmentation",
]

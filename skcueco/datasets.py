"""Loaders for the data sets of the CueCo paper: CIFAR-10, CIFAR-100, ImageNet-100.

See :mod:`skcueco.data.datasets` for the implementation.
"""

from .data.datasets import IMAGENET100_CLASSES, load_cifar10, load_cifar100, load_imagenet100

__all__ = ["IMAGENET100_CLASSES", "load_cifar10", "load_cifar100", "load_imagenet100"]

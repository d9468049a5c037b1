"""Loaders for the data sets of the CueCo paper: CIFAR-10, CIFAR-100, ImageNet-100.

CIFAR comes through torchvision (the same files, the same ``download=``) as
compact uint8 arrays; ImageNet-100 is read from an ImageFolder copy of
ImageNet as a lazy :class:`~skcueco.ImageSource`, restricted to the standard
100 classes.
"""

import os

import numpy as np

from .sources import ImageSource

# The ImageNet-100 subset of ImageNet-1k introduced by CMC (Y. Tian, D. Krishnan
# and P. Isola, "Contrastive Multiview Coding", 2019; imagenet100.txt of the
# HobbitLong/CMC repository), used by solo-learn and the CueCo paper's table.
# The order is CMC's; labels follow the sorted order, as in ImageFolder.
IMAGENET100_CLASSES = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406", "n02091831",
    "n04517823", "n04589890", "n03062245", "n01773797", "n01735189", "n07831146",
    "n07753275", "n03085013", "n04485082", "n02105505", "n01983481", "n02788148",
    "n03530642", "n04435653", "n02086910", "n02859443", "n13040303", "n03594734",
    "n02085620", "n02099849", "n01558993", "n04493381", "n02109047", "n04111531",
    "n02877765", "n04429376", "n02009229", "n01978455", "n02106550", "n01820546",
    "n01692333", "n07714571", "n02974003", "n02114855", "n03785016", "n03764736",
    "n03775546", "n02087046", "n07836838", "n04099969", "n04592741", "n03891251",
    "n02701002", "n03379051", "n02259212", "n07715103", "n03947888", "n04026417",
    "n02326432", "n03637318", "n01980166", "n02113799", "n02086240", "n03903868",
    "n02483362", "n04127249", "n02089973", "n03017168", "n02093428", "n02804414",
    "n02396427", "n04418357", "n02172182", "n01729322", "n02113978", "n03787032",
    "n02089867", "n02119022", "n03777754", "n04238763", "n02231487", "n03032252",
    "n02138441", "n02104029", "n03837869", "n03494278", "n04136333", "n03794056",
    "n03492542", "n02018207", "n04067472", "n03930630", "n03584829", "n02123045",
    "n04229816", "n02100583", "n03642806", "n04336792", "n03259280", "n02116738",
    "n02108089", "n03424325", "n01855672", "n02090622",
)


def load_cifar10(root, train=True, download=False):
    """CIFAR-10 as uint8 images and integer labels.

    Parameters
    ----------
    root : str or path-like
        Folder holding (or receiving) ``cifar-10-batches-py``, as for
        :class:`torchvision.datasets.CIFAR10`.
    train : bool, default=True
        The 50,000 training images, or the 10,000 test images.
    download : bool, default=False
        Download the archive (163 MB) into ``root`` when it is not there.

    Returns
    -------
    X : ndarray of shape (n_samples, 32, 32, 3), dtype uint8
        The images, channels last.
    y : ndarray of shape (n_samples,), dtype int64
        Class indices; the names are ``torchvision.datasets.CIFAR10.classes``.

    Examples
    --------
    >>> from skcueco.datasets import load_cifar10
    >>> X, y = load_cifar10("data", download=True)  # doctest: +SKIP
    >>> X.shape, y[:3]  # doctest: +SKIP
    ((50000, 32, 32, 3), array([6, 9, 9]))
    """
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, root, train, download)


def load_cifar100(root, train=True, download=False):
    """CIFAR-100 as uint8 images and fine (100-class) integer labels.

    Parameters
    ----------
    root : str or path-like
        Folder holding (or receiving) ``cifar-100-python``, as for
        :class:`torchvision.datasets.CIFAR100`.
    train : bool, default=True
        The 50,000 training images, or the 10,000 test images.
    download : bool, default=False
        Download the archive (161 MB) into ``root`` when it is not there.

    Returns
    -------
    X : ndarray of shape (n_samples, 32, 32, 3), dtype uint8
        The images, channels last.
    y : ndarray of shape (n_samples,), dtype int64
        Class indices; the names are ``torchvision.datasets.CIFAR100.classes``.
    """
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, root, train, download)


def _cifar(dataset_class, root, train, download):
    try:
        data = dataset_class(os.fspath(root), train=train, download=download)
    except RuntimeError as exc:
        # torchvision's message does not say where it looked
        raise FileNotFoundError(
            f"{dataset_class.__name__} not found (or corrupted) in "
            f"{os.path.join(os.fspath(root), dataset_class.base_folder)!r}; pass "
            f"download=True to fetch it. ({exc})"
        ) from exc
    X = np.ascontiguousarray(data.data, dtype=np.uint8)  # (N, 32, 32, 3)
    return X, np.asarray(data.targets, dtype=np.int64)


def load_imagenet100(root, split="train", *, image_size=224):
    """ImageNet-100 (CMC's 100-class subset) from an ImageFolder layout.

    Parameters
    ----------
    root : str or path-like
        A copy of ImageNet (or of ImageNet-100) with ``train/`` and ``val/``
        each holding one folder per WordNet id (``n02869837/...``). The
        validation images must be sorted into class folders (e.g. with the
        usual ``valprep.sh``). Other classes in the folders are ignored.
    split : {"train", "val"}, default="train"
        Subfolder of ``root`` to read.
    image_size : int or tuple of (int, int), default=224
        Images are scaled to cover this size (aspect ratio kept) and
        centre-cropped; 224 is the standard ImageNet training resolution.

    Returns
    -------
    X : ImageSource
        Lazy RGB images; ``X.classes`` lists the 100 WordNet ids in sorted
        order.
    y : ndarray of shape (n_samples,), dtype int64
        Index of each image's class in ``X.classes``.

    Raises
    ------
    FileNotFoundError
        If ``root/split`` or any of the 100 class folders is missing.

    Examples
    --------
    >>> from skcueco.datasets import load_imagenet100
    >>> X, y = load_imagenet100("/data/imagenet", "val")  # doctest: +SKIP
    >>> X.shape, len(X.classes)  # doctest: +SKIP
    ((5000, 150528), 100)
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
    X = ImageSource.from_folder(os.path.join(os.fspath(root), split),
                                classes=IMAGENET100_CLASSES, image_size=image_size,
                                mode="RGB")
    return X, X.targets

"""Which inputs hold images, and reading one image to uint8 pixels.

Every image of a set goes through :func:`decode`, which fixes its colour mode
and size, so images of mixed modes and sizes become rows of equal length.
Errors name the file (or item) they come from.
"""

import numbers
import os

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

# single-channel PIL modes: a set starting with one of these is read as "L"
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# torchvision's ImageFolder reads the same suffixes
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_path(obj):
    """Whether ``obj`` names a file (str or path-like)."""
    return isinstance(obj, (str, os.PathLike))


def probe(item, origin):
    """``(mode, (height, width))`` of an image, reading only a file's header."""
    if is_path(item):
        try:
            with Image.open(item) as img:  # lazy: the pixels are not decoded
                return img.mode, (img.height, img.width)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"Image file not found: {os.fspath(item)!r}.") from exc
        except Exception as exc:
            raise ValueError(
                f"Cannot read image file {os.fspath(item)!r}: {type(exc).__name__}: {exc}"
            ) from exc
    img = as_pil(item, origin)
    return img.mode, (img.height, img.width)


def decode(item, origin, mode, size):
    """Pixels of one image as a flat uint8 row ``(H * W * C,)``, channels last.

    Parameters
    ----------
    item : str, path-like, PIL.Image.Image, Tensor, ndarray or tuple
        A file path, an image, or a Dataset item (an ``(image, label)``
        tuple reads its first element).
    origin : str
        Where ``item`` comes from, for error messages (e.g. "item 3").
    mode : {"RGB", "L"}
    size : tuple of int
        ``(height, width)``.
    """
    if is_path(item):
        path = os.fspath(item)
        try:
            with Image.open(path) as img:
                img.load()  # decode now, while the file is open
                return _pixels(img, mode, size)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"Image file not found: {path!r}.") from exc
        except Exception as exc:
            # truncated or corrupt files fail in load(); any failure must name
            # the file, or one bad image among 100,000 is impossible to find
            raise ValueError(
                f"Cannot read image file {path!r}: {type(exc).__name__}: {exc}"
            ) from exc
    try:
        return _pixels(as_pil(item, origin), mode, size)
    except (TypeError, ValueError):
        raise
    except Exception as exc:
        raise ValueError(f"Cannot read {origin}: {type(exc).__name__}: {exc}") from exc


def as_pil(item, origin):
    """A PIL image from a PIL image, a CHW tensor or an HWC array (or a tuple)."""
    if isinstance(item, (tuple, list)) and item:
        item = item[0]  # (image, label) from a labeled Dataset
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (torch.Tensor, np.ndarray)):
        from torchvision.transforms.functional import to_pil_image

        if item.dtype.is_floating_point if isinstance(item, torch.Tensor) else (
                item.dtype.kind == "f"):
            # to_pil_image truncates x * 255, so a value a hair below a level
            # (from a float computation) loses it: round instead
            item = (item * 255).round().clip(0, 255)
            item = item.to(torch.uint8) if isinstance(item, torch.Tensor) else item.astype(np.uint8)
        try:
            return to_pil_image(item)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Cannot read {origin} as an image: {exc}") from exc
    raise TypeError(
        f"{origin} is a {type(item).__name__}; expected a PIL image, a tensor "
        "(C, H, W), an array (H, W[, C]) or an (image, label) tuple."
    )


def _pixels(img, mode, size):
    img = fit_size(convert(img, mode), size)
    return np.asarray(img, dtype=np.uint8).reshape(-1)


def convert(img, mode):
    """``img`` in ``mode`` ("RGB" or "L"), scaling 16-bit data rather than clipping."""
    if img.mode == mode:
        return img
    if img.mode.startswith("I;16"):
        # PIL's convert clips 16-bit values at 255 (a white image); scale instead
        pixels = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.rint(pixels).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns on a direct P -> RGB here
    return img.convert(mode)


def fit_size(img, size):
    """Scale ``img`` to cover ``size = (height, width)``, then crop the centre.

    Keeps the aspect ratio (as torchvision's ``Resize`` + ``CenterCrop``);
    an image already of that size is returned untouched.
    """
    h, w = size
    if img.size == (w, h):
        return img
    scale = max(w / img.width, h / img.height)
    new_w = max(w, round(img.width * scale))
    new_h = max(h, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return img.crop((left, top, left + w, top + h))


def scan_folder(root, classes=None):
    """Image files under ``root`` in ImageFolder layout, with class indices.

    Parameters
    ----------
    root : str or path-like
        A directory with one subfolder per class (hidden ones skipped), or
        with image files directly in it (then there are no labels).
    classes : list of str, default=None
        Only these subfolders (all must exist); default: every subfolder.

    Returns
    -------
    files : list of str
    targets : ndarray of shape (n_files,) or None
    classes : list of str or None
        Sorted class names; ``targets`` index into it.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder not found: {root!r}.")
    # hidden folders (.ipynb_checkpoints, .git) are not classes
    subdirs = sorted(e.name for e in os.scandir(root)
                     if e.is_dir() and not e.name.startswith("."))
    if classes is not None:
        missing = sorted(set(classes) - set(subdirs))
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} class folder(s) missing under {root!r}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}."
            )
        subdirs = sorted(classes)
    if not subdirs:
        files = _image_files(root)
        if not files:
            raise ValueError(f"No image files ({', '.join(IMG_EXTENSIONS)}) in {root!r}.")
        return files, None, None
    files, targets = [], []
    for index, name in enumerate(subdirs):
        found = _image_files(os.path.join(root, name), recursive=True)
        files += found
        targets += [index] * len(found)
    if not files:
        raise ValueError(f"No image files in the class folders of {root!r}.")
    return files, np.asarray(targets, dtype=np.int64), list(subdirs)


def _image_files(folder, recursive=False):
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(IMG_EXTENSIONS)]
        if not recursive:
            break
    return found


def is_int(key):
    """Whether ``key`` is an integer (and not a bool)."""
    return isinstance(key, numbers.Integral) and not isinstance(key, bool)


def check_size(image_size):
    """``image_size`` (None, an int or a pair) as ``(height, width)`` or None."""
    if image_size is None:
        return None
    if is_int(image_size):
        image_size = (image_size, image_size)
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else None
    if size is None or len(size) != 2 or not all(is_int(s) and s > 0 for s in size):
        raise ValueError(
            f"image_size must be None, a positive int or (height, width), got {image_size!r}."
        )
    return int(size[0]), int(size[1])


def collect(X):
    """``(kind, items, targets, classes)`` when ``X`` holds images, else None."""
    if is_path(X):
        if not os.path.isdir(X):
            raise (ValueError if os.path.exists(X) else FileNotFoundError)(
                f"{os.fspath(X)!r} is not a directory; pass a list of image paths, or a "
                "folder of images (one subfolder per class)."
            )
        return ("files", *scan_folder(X))
    if isinstance(X, Dataset):
        if isinstance(X, IterableDataset) or not hasattr(X, "__len__"):
            raise TypeError("An iterable Dataset cannot be indexed; pass a map-style "
                            "Dataset with __len__ and __getitem__.")
        targets = getattr(X, "targets", None)
        targets = None if targets is None else np.asarray(targets)
        return "dataset", X, targets, getattr(X, "classes", None)
    if isinstance(X, pd.Series):
        X = X.to_numpy()
    if isinstance(X, np.ndarray):
        if X.ndim != 1 or X.dtype.kind not in "OU":
            return None
        X = X.tolist()
    if not isinstance(X, (list, tuple)) or len(X) == 0:
        return None
    if all(is_path(x) for x in X):
        return "files", [os.fspath(x) for x in X], None, None
    if all(isinstance(x, Image.Image) for x in X):
        return "images", list(X), None, None
    return None

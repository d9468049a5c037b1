"""Which inputs hold images, and reading one image to uint8 pixels.

Every image of a set goes through :func:`decode`, which fixes its colour mode
and size, so images of mixed modes and sizes become rows of equal length.
Errors name the file (or item) they come from.

Files are untrusted: only regular files are opened (a named pipe or a
device could block forever), an image whose header declares more than
``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused before it is decoded, and
reading one costs memory in proportion to its declared size and to the
output size only (see docs/reliability.rst). Folders are walked so that
symbolic links cannot repeat, misfile or endlessly list images.
"""

import numbers
import os
import re
import stat
import warnings

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
        path = os.fspath(item)
        try:
            with _open_regular(path) as fp, Image.open(fp) as img:  # lazy: header only
                return img.mode, (img.height, img.width)
        except Exception as exc:
            _raise_named(path, exc)
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
            with _open_regular(path) as fp, Image.open(fp) as img:
                _check_pixels(img, path, size)
                img.load()  # decode now, while the file is open
                converted = convert(img, mode)
                if converted is not img:
                    img.close()  # frees the decoded pixels before resizing
                return _pixels(converted, mode, size)
        except Exception as exc:
            # truncated or corrupt files fail in load(); any failure must name
            # the file, or one bad image among 100,000 is impossible to find
            _raise_named(path, exc)
    try:
        return _pixels(as_pil(item, origin), mode, size)
    except (TypeError, ValueError):
        raise
    except Exception as exc:
        raise ValueError(f"Cannot read {origin}: {type(exc).__name__}: {exc}") from exc


class _Refused(ValueError):
    """A file refused before decoding; the message names it already."""


def _raise_named(path, exc):
    """Raise ``exc`` again as an error that names the file ``path``."""
    if isinstance(exc, _Refused):
        raise exc
    if isinstance(exc, Image.DecompressionBombError):
        # over twice the limit, Pillow refuses the header itself
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)):,}" if found else "too many"
        raise _too_large(path, declared) from exc
    if isinstance(exc, FileNotFoundError):
        raise FileNotFoundError(f"Image file not found: {path!r}.") from exc
    raise ValueError(f"Cannot read image file {path!r}: {type(exc).__name__}: {exc}") from exc


def _too_large(path, declared):
    return _Refused(
        f"Image file {path!r} declares {declared} pixels, more than the limit of "
        f"{Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS): it could be a "
        "decompression bomb. Set PIL.Image.MAX_IMAGE_PIXELS higher (None: no limit) to "
        "read it."
    )


def _open_regular(path):
    """``path`` opened for binary reading, refused unless it is a regular file.

    Opening a named pipe blocks until something writes to it, and a device
    such as /dev/zero never ends: the type is checked before opening, and
    again on the descriptor, opened non-blocking, so that a file swapped in
    between cannot block either.
    """
    kind = _file_kind(os.stat(path).st_mode)
    if kind is None:
        fp = open(path, "rb", opener=_open_nonblocking)
        kind = _file_kind(os.fstat(fp.fileno()).st_mode)
        if kind is None:
            return fp
        fp.close()
    raise _Refused(f"Cannot read image file {path!r}: it is {kind}, not a regular file.")


def _open_nonblocking(path, flags):
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))  # no O_NONBLOCK on Windows


def _file_kind(st_mode):
    """None for a regular file, else what it is, in words."""
    if stat.S_ISREG(st_mode):
        return None
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device")):
        if test(st_mode):
            return words
    return "a special file"


def _check_pixels(img, path, size):
    """Refuse ``img`` (opened, not decoded) if its header declares too many pixels.

    A JPEG file over the limit is drafted first: libjpeg decodes it at 1/2,
    1/4 or 1/8 scale, still covering ``size``, and is read when that fits.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or img.width * img.height <= limit:
        return
    declared = f"{img.width} x {img.height} = {img.width * img.height:,}"
    if size is not None:
        img.draft(None, cover_size(img.size, size))  # no-op for formats other than JPEG
        if img.width * img.height <= limit:
            return
    raise _too_large(path, declared)


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
        img = _sixteen_to_eight(img)
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns on a direct P -> RGB here
    return img.convert(mode)


def _sixteen_to_eight(img):
    """A 16-bit image as "L", each value ``v`` to ``round(v / 257)``.

    Converted a band of rows at a time, in 16-bit integers: one byte per
    pixel for the result and a band's worth of temporaries, where floats over
    the whole image would take 24 bytes per pixel.
    """
    out = np.empty((img.height, img.width), dtype=np.uint8)
    band = max(1, (1 << 18) // max(img.width, 1))
    for top in range(0, img.height, band):
        bottom = min(top + band, img.height)
        v = np.asarray(img.crop((0, top, img.width, bottom))).astype(np.uint16)
        # v = 257 q + r, 0 <= r <= 256: v / 257 rounds to q, or up from r = 129 on
        # (no ties: 257 is odd), exactly as np.rint(v / 257.0)
        q = v // 257
        v -= q * 257
        q += v >= 129
        out[top:bottom] = q
    return Image.fromarray(out, "L")


def cover_size(image_size, size):
    """``(width, height)`` of an image of ``image_size = (width, height)`` scaled,
    aspect ratio kept, just enough to cover ``size = (height, width)``."""
    (width, height), (h, w) = image_size, size
    scale = max(w / width, h / height)
    return max(w, round(width * scale)), max(h, round(height * scale))


# the image scaled to cover the output is made in full while it is no larger
# than the image itself or this many output images (an aspect ratio up to 32
# times the output's); past that, only the part kept is resampled
COVER_FACTOR = 32


def fit_size(img, size):
    """Scale ``img`` to cover ``size = (height, width)``, then crop the centre.

    Keeps the aspect ratio (as torchvision's ``Resize`` + ``CenterCrop``);
    an image already of that size is returned untouched.
    """
    h, w = size
    if img.size == (w, h):
        return img
    new_w, new_h = cover_size(img.size, size)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    if new_w * new_h <= max(img.width * img.height, COVER_FACTOR * w * h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        return img.crop((left, top, left + w, top + h))
    # e.g. 1,000,000 x 1 pixels to 32 x 32 would first be scaled to 32,000,000
    # x 32: resample only the box that the crop keeps (the same sampling, up
    # to Pillow's float32 box coordinates: values may differ by one level)
    sx, sy = img.width / new_w, img.height / new_h
    box = (left * sx, top * sy,
           _below((left + w) * sx, img.width), _below((top + h) * sy, img.height))
    return img.resize((w, h), Image.Resampling.BILINEAR, box=box)


def _below(value, bound):
    """``value`` as a float32 (Pillow's box type) no larger than ``bound``."""
    value = np.float32(min(value, bound))
    return float(value if value <= bound else np.nextafter(value, np.float32(0)))


def scan_folder(root, classes=None):
    """Image files under ``root`` in ImageFolder layout, with class indices.

    Each real file is listed once, under its own class. Symbolic links are
    followed to files and to folders outside ``root``, each folder at most
    once; a link to a folder inside ``root`` (listed under its own path, or
    not at all) or to one that contains ``root`` (a loop) is skipped. So is
    anything that is not a regular file (a named pipe, a device, a broken
    link), with a warning that names what was skipped.

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
    walk = _FolderWalk(root, [os.path.join(root, name) for name in subdirs])
    if not subdirs:
        files = walk.files()[0]
        if not files:
            raise ValueError(f"No image files ({', '.join(IMG_EXTENSIONS)}) in {root!r}.")
        return files, None, None
    found = walk.files()
    files = [f for names in found for f in names]
    targets = [index for index, names in enumerate(found) for _ in names]
    if not files:
        raise ValueError(f"No image files in the class folders of {root!r}.")
    return files, np.asarray(targets, dtype=np.int64), list(subdirs)


class _FolderWalk:
    """The image files of each class folder under a root, each real file once.

    Files are listed in the order of ``os.walk`` with sorted names, links to
    folders in their place; :meth:`files` warns about what it skipped.
    """

    def __init__(self, root, folders):
        self.root = root
        self.root_real = os.path.realpath(root)
        self.folders = folders  # the class folders; none: the files of root itself
        self.class_reals = [os.path.realpath(f) for f in folders]
        self.class_set = set(self.class_reals)
        self.walked = set()     # real paths of the folders listed
        self.skipped = []       # (path, why)

    def files(self):
        """Per class folder (or for root alone), its list of image files."""
        if not self.folders:
            entries = [self._walk(self.root, self.root_real, recursive=False)]
        else:
            entries = [None] * len(self.folders)
            # real folders first: a class folder that is a link to another class
            # folder (or below it) must not take that class's files
            order = sorted(range(len(self.folders)),
                           key=lambda i: os.path.islink(self.folders[i]))
            for i in order:
                entries[i] = self._class(self.folders[i], self.class_reals[i])
        listed = set()
        files = []
        for found in entries:
            kept = []
            for path, target in found:
                if target is not None:  # a link to a file: kept unless listed already
                    folder, name = os.path.split(target)
                    if (folder in self.walked and name.lower().endswith(IMG_EXTENSIONS)
                            or target in listed):
                        self.skipped.append((path, "a link to a file listed already"))
                        continue
                    listed.add(target)
                kept.append(path)
            files.append(kept)
        if self.skipped:
            shown = "; ".join(f"{os.path.relpath(p, self.root)} ({why})"
                              for p, why in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(f"Skipped {len(self.skipped)} entries under {self.root!r}: "
                          f"{shown}{more}.", UserWarning, stacklevel=3)
        return files

    def _class(self, folder, real):
        if real in self.walked:
            self.skipped.append((folder, "a link to a folder listed already"))
            return []
        if _inside(self.root_real, real):
            self.skipped.append((folder, "a link to a folder that contains the image folder"))
            return []
        return self._walk(folder, real, recursive=True)

    def _walk(self, top, top_real, recursive):
        """``[(path, link target or None)]`` of the image files under ``top``."""
        found = []
        stack = [(top, top_real)]
        while stack:
            path, real = stack.pop()
            if real in self.walked:
                continue  # reached twice through links outside root
            self.walked.add(real)
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.skipped.append((path, f"cannot be listed: {exc.strerror or exc}"))
                continue
            subdirs = []
            for entry in entries:
                try:
                    self._entry(entry, real, found, subdirs)
                except OSError as exc:  # gone, or no permission, since listed
                    self.skipped.append((entry.path, f"cannot be read: {exc.strerror or exc}"))
            if not recursive:
                break
            for sub, sub_real, is_link in reversed(subdirs):
                why = self._refuse_link(real, sub_real) if is_link else None
                if why:
                    self.skipped.append((sub, why))
                elif sub_real not in self.walked and sub_real not in self.class_set:
                    stack.append((sub, sub_real))  # else: listed already, or a class folder
        return found

    def _entry(self, entry, real, found, subdirs):
        is_image = entry.name.lower().endswith(IMG_EXTENSIONS)
        if entry.is_symlink():
            try:
                st_mode = os.stat(entry.path).st_mode
            except OSError as exc:  # a missing target, or a loop of links
                if is_image:
                    self.skipped.append((entry.path, f"a broken link: {exc.strerror or exc}"))
                return
            if stat.S_ISDIR(st_mode):
                subdirs.append((entry.path, os.path.realpath(entry.path), True))
            elif is_image and stat.S_ISREG(st_mode):
                found.append((entry.path, os.path.realpath(entry.path)))
            elif is_image:
                self.skipped.append((entry.path, f"a link to {_file_kind(st_mode)}"))
        elif entry.is_dir(follow_symlinks=False):
            subdirs.append((entry.path, os.path.join(real, entry.name), False))
        elif is_image and entry.is_file(follow_symlinks=False):
            found.append((entry.path, None))
        elif is_image:
            kind = _file_kind(entry.stat(follow_symlinks=False).st_mode)
            self.skipped.append((entry.path, f"{kind}, not a regular file"))

    def _refuse_link(self, parent_real, target):
        """Why a link in ``parent_real`` to the folder ``target`` is not followed."""
        tops = [self.root_real, *self.class_reals]
        if _inside(parent_real, target):
            return "a link to a folder that contains it: a loop"
        if any(_inside(top, target) and top != target for top in tops):
            return "a link to a folder that contains the image folder or a class folder"
        if any(_inside(target, top) for top in tops):
            return "a link to a folder inside the image folder, listed under its own path"
        if target in self.walked:
            return "a link to a folder listed already"
        return None


def _inside(path, folder):
    """Whether the real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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

"""ImageSource: images in files, folders, PIL lists or Datasets, read like a uint8 array.

The training pipeline only needs compact 2-D uint8 rows gathered a batch at a
time (``X[indices]`` in the loader, ``X[start:stop]`` at inference). An
:class:`ImageSource` offers that interface and decodes only the images whose
rows are asked for, so a folder of 100,000 JPEG files is never held in memory
and loader workers decode in parallel.
"""

import numpy as np
from torch.utils.data import Dataset, Subset

from .imageio import GRAY_MODES, check_size, collect, decode, is_int, probe, scan_folder

MODES = ("auto", "RGB", "L")


class ImageSource:
    """A lazy, indexable set of images that behaves like a 2-D uint8 array.

    Row ``i`` holds image ``i`` converted to ``mode``, fitted to
    ``image_size`` and flattened channels-last (``H, W, C``). Indexing with
    an int, a slice, a list or array of ints or a boolean mask decodes those
    images only and returns a uint8 ndarray. ``X[rows, ...]`` (the spelling
    scikit-learn's splitters use) returns a lazy ``ImageSource`` over the
    rows instead, so ``train_test_split`` and cross-validation decode nothing.

    Parameters
    ----------
    images : list, tuple or ndarray of paths, pandas.Series of paths, list of \
            PIL images, str or path-like directory, or torch Dataset
        - file paths (str or :class:`pathlib.Path`): decoded on access;
        - a directory in ImageFolder layout (one subfolder per class, hidden
          ones skipped; labels in ``targets``), or holding the image files
          directly (no labels);
        - PIL images;
        - a map-style :class:`torch.utils.data.Dataset` whose items are PIL
          images, ``(C, H, W)`` tensors (float in [0, 1] or uint8), ``(H, W[,
          C])`` uint8 arrays, or ``(image, label)`` tuples; its ``targets``
          and ``classes`` attributes are kept when it has them.
    image_size : int, tuple of (int, int) or None, default=None
        ``(height, width)`` every image is fitted to: scaled (bilinear, aspect
        ratio kept) until it covers that size, then centre-cropped, like
        torchvision's ``Resize`` + ``CenterCrop``. An int means a square.
        None: the size of the first image.
    mode : {"auto", "RGB", "L"}, default="auto"
        Colour mode every image is converted to. ``"auto"``: ``"L"`` when the
        first image is single-channel (modes 1, L, LA, I, I;16, F), else
        ``"RGB"`` (palette, RGBA, CMYK... become RGB). Only the first image is
        looked at, so pass ``mode="RGB"`` for a set that mixes grayscale and
        colour and starts with a grayscale image.

    Attributes
    ----------
    shape : tuple of (int, int)
        ``(n_images, height * width * channels)``.
    dtype : numpy.dtype
        Always uint8.
    ndim : int
        Always 2.
    image_size : tuple of (int, int)
        ``(height, width)`` of the decoded images.
    mode : {"RGB", "L"}
        Colour mode of the decoded images.
    targets : ndarray of shape (n_images,) or None
        Class indices of a folder (or a Dataset that has ``targets``).
    classes : list of str or None
        Class names, in the order of the indices in ``targets``.

    Notes
    -----
    Construction opens the header of the first image only (for its mode and
    size when they are not given). A missing file raises
    ``FileNotFoundError`` and an unreadable one ``ValueError``, both naming
    the file, when its row is first read: in the first epoch of training.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skcueco import ImageSource
    >>> images = [Image.new("RGB", (40, 30)), Image.new("L", (16, 16))]
    >>> X = ImageSource(images, image_size=16)
    >>> X.shape, X.mode
    ((2, 768), 'RGB')
    >>> X[[1]].shape
    (1, 768)
    """

    def __init__(self, images, *, image_size=None, mode="auto"):
        found = _collect(images)
        if found is None and isinstance(images, (list, tuple)) and not images:
            raise ValueError("Found 0 images: an ImageSource needs at least one image.")
        if found is None:
            raise TypeError(
                f"Cannot read images from a {type(images).__name__}: expected file "
                "paths, a directory, PIL images or a torch Dataset."
            )
        self._setup(*found, image_size=image_size, mode=mode)

    @classmethod
    def from_folder(cls, root, *, classes=None, image_size=None, mode="auto"):
        """Images of an ImageFolder directory, optionally of some classes only.

        Parameters
        ----------
        root : str or path-like
            One subfolder per class.
        classes : list of str, default=None
            Subfolders to read (all must exist), labeled in sorted order.
            Default: every subfolder.
        image_size : int, tuple of (int, int) or None, default=None
            Size every image is fitted to, as for :class:`ImageSource`.
        mode : {"auto", "RGB", "L"}, default="auto"
            Colour mode every image is converted to, as for
            :class:`ImageSource`.

        Returns
        -------
        source : ImageSource
            The images of the folder, labeled by subfolder.
        """
        files, targets, names = scan_folder(root, classes)
        source = cls.__new__(cls)
        source._setup("files", files, targets, names, image_size=image_size, mode=mode)
        return source

    def _setup(self, kind, items, targets, classes, *, image_size, mode):
        if len(items) == 0:
            raise ValueError("Found 0 images: an ImageSource needs at least one image.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self._kind, self._items = kind, items
        self.targets, self.classes = targets, classes
        size = check_size(image_size)
        if size is None or mode == "auto":
            first_mode, first_size = probe(items[0], self._origin(0))
            size = size or first_size
            mode = ("L" if first_mode in GRAY_MODES else "RGB") if mode == "auto" else mode
        self.image_size, self.mode = size, mode

    # -- the array interface the pipeline uses ---------------------------------
    @property
    def shape(self):
        """Number of images and number of values per flattened image."""
        h, w = self.image_size
        return (len(self._items), h * w * (3 if self.mode == "RGB" else 1))

    dtype = np.dtype(np.uint8)
    ndim = 2

    def __len__(self):
        return len(self._items)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if len(key) == 2 and key[1] is Ellipsis:
                return self[key[0]] if is_int(key[0]) else self.take(key[0])
            raise IndexError("An ImageSource is indexed by rows only: X[rows] or X[rows, ...].")
        if is_int(key):
            return self._decode(self._positions([key]))[0]
        return self._decode(self._positions(key))

    def __array__(self, dtype=None, copy=None):
        # np.asarray(X) decodes every image: meant for small sets
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)

    def __repr__(self):
        h, w = self.image_size
        return (f"ImageSource(n_images={len(self)}, image_size=({h}, {w}), "
                f"mode={self.mode!r}, from={self._kind!r})")

    # -- lazy views ------------------------------------------------------------
    def take(self, rows):
        """A lazy ImageSource over some rows (nothing is decoded).

        Parameters
        ----------
        rows : slice, array-like of int or bool mask
            The rows to keep, in the order given.

        Returns
        -------
        source : ImageSource
            The same kind of source over those rows only.
        """
        positions = self._positions(rows)
        if isinstance(self._items, Dataset):
            items = Subset(self._items, positions.tolist())
        else:
            items = [self._items[i] for i in positions]
        targets = None if self.targets is None else self.targets[positions]
        return self._copy(_items=items, targets=targets)

    def with_format(self, image_size=None, mode=None):
        """The same images decoded at another size and/or mode.

        Parameters
        ----------
        image_size : int, tuple of (int, int) or None
            None keeps the current size.
        mode : {"RGB", "L"} or None
            None keeps the current mode.

        Returns
        -------
        source : ImageSource
            ``self`` when nothing changes.
        """
        size = check_size(image_size) or self.image_size
        if mode is not None and mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}.")
        mode = mode or self.mode
        if size == self.image_size and mode == self.mode:
            return self
        return self._copy(image_size=size, mode=mode)

    def _copy(self, **attributes):
        new = object.__new__(type(self))
        new.__dict__.update({**self.__dict__, **attributes})
        return new

    # -- decoding --------------------------------------------------------------
    def _positions(self, key):
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        key = np.asarray(key)
        if key.dtype == np.bool_:
            if key.shape != (n,):
                raise IndexError(f"Boolean index of shape {key.shape} does not match "
                                 f"{n} images.")
            return np.flatnonzero(key)
        if key.size == 0:
            return np.zeros(0, dtype=np.intp)
        if key.ndim != 1 or key.dtype.kind not in "iu":
            raise IndexError("An ImageSource is indexed by an int, a slice, a 1-D array "
                             f"of ints or a boolean mask; got {key.dtype} of shape {key.shape}.")
        bad = (key >= n) | (key < -n)
        if bad.any():
            raise IndexError(f"Index {key[bad][0]} is out of bounds for {n} images.")
        return np.where(key < 0, key + n, key).astype(np.intp)

    def _decode(self, positions):
        out = np.empty((len(positions), self.shape[1]), dtype=np.uint8)
        for row, i in enumerate(positions):
            out[row] = decode(self._items[i], self._origin(i), self.mode, self.image_size)
        return out

    def _origin(self, i):
        return f"item {i} of the {self._kind}"


def _collect(X):
    if isinstance(X, ImageSource):
        return X._kind, X._items, X.targets, X.classes
    return collect(X)


def as_image_source(X, image_size=None, mode="auto"):
    """``X`` as an :class:`ImageSource`, or None when it holds no images.

    Numeric arrays, DataFrames and nested lists of numbers give None: they
    stay on the array path.

    Parameters
    ----------
    X : object
    image_size, mode : see :class:`ImageSource`
        Applied to an existing ImageSource too (``"auto"`` keeps its mode).

    Returns
    -------
    source : ImageSource or None
    """
    if isinstance(X, ImageSource):
        return X.with_format(image_size, None if mode == "auto" else mode)
    found = _collect(X)
    if found is None:
        return None
    source = ImageSource.__new__(ImageSource)
    source._setup(*found, image_size=image_size, mode=mode)
    return source

"""ImageSource: images in files, folders, PIL lists or Datasets, read like a uint8 array.

The training pipeline only needs compact 2-D uint8 rows gathered a batch at a
time (``X[indices]`` in the loader, ``X[start:stop]`` at inference). An
:class:`ImageSource` offers that interface and decodes only the images whose
rows are asked for, so a folder of 100,000 JPEG files is never held in memory
and loader workers decode in parallel. Rows read for training are kept once
decoded (:class:`RowCache`), so that only the first epoch decodes.
"""

import mmap
import os
import tempfile
import warnings
import weakref
from multiprocessing.reduction import ForkingPickler

import numpy as np
from torch.utils.data import Dataset, Subset, get_worker_info

from .imageio import GRAY_MODES, check_size, collect, decode, is_int, probe, scan_folder

MODES = ("auto", "RGB", "L")
CACHES = ("auto", "memory", "disk", False)
DEFAULT_CACHE_BUDGET = 1 << 30
"""``cache="auto"``: decoded rows up to this many bytes stay in memory (1 GiB)."""


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
    cache : {"auto", "memory", "disk"} or False, default="auto"
        Keep every row once decoded, so that each image is read and resized
        once, not once per epoch. ``"auto"``: once the source is read for
        training (by ``fit``), in memory when all rows fit in
        ``cache_budget`` bytes, else in a memory-mapped file in
        ``cache_dir``; rows read by ``transform`` and the like alone are not
        kept. ``"memory"`` and ``"disk"`` keep rows from the first read on,
        in memory or in the file, whatever their size. False: decode on every
        read. The cache never changes a row (see Notes).
    cache_budget : int, default=1073741824
        Bytes of decoded rows (``n_images * height * width * channels``)
        that ``cache="auto"`` keeps in memory (1 GiB); a larger set goes to
        disk.
    cache_dir : str or path-like, default=None
        Existing folder for the cache file (``cache="disk"``, or ``"auto"``
        over budget). None: the system's temporary folder (``TMPDIR``).

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

    A cached row is the row as first decoded: a file changed or deleted
    after that is not read again, so every epoch trains on the same images.
    The cache belongs to this object (views made by :meth:`take` and
    :meth:`with_format` start their own, a pickled copy starts empty) and
    goes with it: its file, created under a new name that no other file
    has, is deleted when the source is. Loader workers started by fork (the
    default on Linux) share the cache; workers started otherwise share the
    file only.

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

    def __init__(self, images, *, image_size=None, mode="auto", cache="auto",
                 cache_budget=DEFAULT_CACHE_BUDGET, cache_dir=None):
        _check_cache(cache, cache_budget, cache_dir)  # before any file is listed
        found = _collect(images)
        if found is None and isinstance(images, (list, tuple)) and not images:
            raise ValueError("Found 0 images: an ImageSource needs at least one image.")
        if found is None:
            raise TypeError(
                f"Cannot read images from a {type(images).__name__}: expected file "
                "paths, a directory, PIL images or a torch Dataset."
            )
        self._setup(*found, image_size=image_size, mode=mode, cache=cache,
                    cache_budget=cache_budget, cache_dir=cache_dir)

    @classmethod
    def from_folder(cls, root, *, classes=None, image_size=None, mode="auto", cache="auto",
                    cache_budget=DEFAULT_CACHE_BUDGET, cache_dir=None):
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
        cache : {"auto", "memory", "disk"} or False, default="auto"
            Where decoded rows are kept, as for :class:`ImageSource`.
        cache_budget : int, default=1073741824
            Bytes ``cache="auto"`` keeps in memory, as for :class:`ImageSource`.
        cache_dir : str or path-like, default=None
            Folder of the cache file, as for :class:`ImageSource`.

        Returns
        -------
        source : ImageSource
            The images of the folder, labeled by subfolder.
        """
        _check_cache(cache, cache_budget, cache_dir)  # before any file is listed
        files, targets, names = scan_folder(root, classes)
        source = cls.__new__(cls)
        source._setup("files", files, targets, names, image_size=image_size, mode=mode,
                      cache=cache, cache_budget=cache_budget, cache_dir=cache_dir)
        return source

    def _setup(self, kind, items, targets, classes, *, image_size, mode, cache="auto",
               cache_budget=DEFAULT_CACHE_BUDGET, cache_dir=None):
        if len(items) == 0:
            raise ValueError("Found 0 images: an ImageSource needs at least one image.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self._cache, self._cache_budget, self._cache_dir = _check_cache(
            cache, cache_budget, cache_dir)
        # None: not made yet; False: no caching in this process; else a RowCache
        self._store = None
        self._training = False
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
        # other rows or another format: a cache of its own
        new.__dict__.update({**self.__dict__, "_store": None, "_training": False,
                             **attributes})
        return new

    def __getstate__(self):
        state = dict(self.__dict__)
        if state["_store"] is False:  # this process could not cache; another may
            state["_store"] = None
        return state

    def __setstate__(self, state):
        # a source pickled before caching existed decodes on every read
        state.setdefault("_cache", False)
        state.setdefault("_cache_budget", DEFAULT_CACHE_BUDGET)
        state.setdefault("_cache_dir", None)
        state.setdefault("_store", None)
        state.setdefault("_training", False)
        self.__dict__.update(state)

    # -- the cache of decoded rows -------------------------------------------
    def _keep_decoded(self):
        """Training reads every row again each epoch: with ``cache="auto"``
        keep them from now on. Makes the cache now, before loader workers
        start, so that forked workers share it."""
        self._training = True
        self._row_cache()

    def _row_cache(self):
        """The :class:`RowCache` of this source, made on first need, or None."""
        if self._store is None:
            active = self._cache in ("memory", "disk") or (
                self._cache == "auto" and self._training)
            if not active:
                return None
            if get_worker_info() is not None:
                # a loader worker with no cache of its parent's: one of its
                # own would hold every row once more per worker
                self._store = False
                return None
            n, width = self.shape
            where = self._cache
            if where == "auto":
                where = "memory" if n * width <= self._cache_budget else "disk"
            self._store = RowCache.make(n, width, where, self._cache_dir) or False
        return self._store or None

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
        cache = self._row_cache()
        if cache is None:
            out = np.empty((len(positions), self.shape[1]), dtype=np.uint8)
            for row, i in enumerate(positions):
                out[row] = decode(self._items[i], self._origin(i), self.mode, self.image_size)
            return out
        out = cache.rows[positions]  # a copy; rows not cached yet are filled below
        for row in np.flatnonzero(~cache.filled[positions]):
            i = positions[row]
            if cache.filled[i]:  # asked for twice in this batch
                out[row] = cache.rows[i]
                continue
            out[row] = decode(self._items[i], self._origin(i), self.mode, self.image_size)
            cache.put(i, out[row])
        return out

    def _origin(self, i):
        return f"item {i} of the {self._kind}"


class RowCache:
    """Decoded uint8 rows of one :class:`ImageSource`, each written once.

    One buffer holds the rows, ``(n_rows, width)``, then one flag per row.
    A row's flag is set only after the whole row is written, so a row is
    either read whole from the cache or decoded again; rows decoded twice
    (by two loader workers) are the same bytes. The buffer is shared memory
    (``"memory"``, an anonymous shared mapping, not ``/dev/shm``) or a
    file (``"disk"``), so loader workers forked from the process see and
    fill the same rows.

    Parameters
    ----------
    buffer : mmap.mmap or numpy.memmap
        ``n_rows * (width + 1)`` bytes, zero-filled.
    n_rows, width : int
    path : str, default=None
        The file of a disk cache, deleted with this object in the process
        that made it.
    """

    def __init__(self, buffer, n_rows, width, path=None):
        # plain ndarray views (a memmap's slices would stay memmaps)
        flat = (np.frombuffer(buffer, dtype=np.uint8) if isinstance(buffer, mmap.mmap)
                else np.asarray(buffer))
        self.rows = flat[:n_rows * width].reshape(n_rows, width)
        self.filled = flat[n_rows * width:].view(np.bool_)
        self.n_rows, self.width, self.path = n_rows, width, path
        self._buffer = buffer

    @classmethod
    def make(cls, n_rows, width, where, directory=None):
        """A new, empty cache in ``"memory"`` or on ``"disk"``, or None.

        A cache that cannot be made (no room on the disk, no memory) warns
        and gives None: the images are then decoded on every read.

        Parameters
        ----------
        n_rows, width : int
            Rows of ``width`` bytes.
        where : {"memory", "disk"}
        directory : str or path-like, default=None
            Folder of the disk cache's file; None: the temporary folder.

        Returns
        -------
        cache : RowCache or None
        """
        size = n_rows * (width + 1)
        if where == "memory":
            try:
                return cls(mmap.mmap(-1, size), n_rows, width)
            except (OSError, ValueError) as exc:
                _cannot_cache(f"{size / 2**20:.0f} MiB of memory", exc)
                return None
        directory = os.fspath(directory) if directory is not None else tempfile.gettempdir()
        path = None
        try:
            # a new name, created exclusively: no other file is ever touched
            fd, path = tempfile.mkstemp(prefix="skcueco-images-", suffix=".cache",
                                        dir=directory)
            try:
                # reserve the blocks now: a full disk raises here rather than
                # killing the process when a mapped page is written later
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, size)
                else:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
            buffer = np.memmap(path, dtype=np.uint8, mode="r+", shape=(size,))
        except OSError as exc:
            if path is not None:
                _remove(path, os.getpid())
            _cannot_cache(f"a {size / 2**20:.0f} MiB file in {directory!r}", exc)
            return None
        cache = cls(buffer, n_rows, width, path)
        weakref.finalize(cache, _remove, path, os.getpid())
        return cache

    def put(self, i, row):
        """Store ``row`` as row ``i``, then mark it filled."""
        self.rows[i] = row
        self.filled[i] = True

    def __reduce__(self):
        # a pickled ImageSource (joblib, a saved object) starts an empty cache
        return _no_cache, ()


def _reduce_for_worker(cache):
    """How a loader worker started by spawn or forkserver gets the cache."""
    if cache.path is None:
        # anonymous shared memory cannot be passed on: the worker decodes
        return _no_cache_here, ()
    return _reopen, (cache.path, cache.n_rows, cache.width)


ForkingPickler.register(RowCache, _reduce_for_worker)


def _no_cache():
    return None


def _no_cache_here():
    return False


def _reopen(path, n_rows, width):
    try:
        buffer = np.memmap(path, dtype=np.uint8, mode="r+", shape=(n_rows * (width + 1),))
    except OSError:
        return False
    return RowCache(buffer, n_rows, width, path)


def _remove(path, owner):
    if os.getpid() != owner:  # a forked process leaves its parent's file alone
        return
    try:
        os.remove(path)
    except OSError:
        pass


def _cannot_cache(what, exc):
    warnings.warn(
        f"Cannot keep the decoded images ({what}: {exc}); every epoch decodes them "
        "again. Pass cache_dir= a folder with room, or cache=False.",
        RuntimeWarning, stacklevel=4,
    )


def _check_cache(cache, budget, directory):
    if not any(cache is c or (isinstance(c, str) and cache == c) for c in CACHES):
        raise ValueError(f"cache must be one of 'auto', 'memory', 'disk' or False, "
                         f"got {cache!r}.")
    if isinstance(budget, bool) or not is_int(budget):
        raise TypeError(f"cache_budget must be an int (bytes), got {budget!r}.")
    if budget < 0:
        raise ValueError(f"cache_budget must be >= 0 bytes, got {budget}.")
    if directory is not None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path, got {type(directory).__name__}.")
        if not os.path.isdir(directory):
            raise ValueError(f"cache_dir={os.fspath(directory)!r} is not an existing folder.")
        directory = os.fspath(directory)
    return cache, int(budget), directory


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

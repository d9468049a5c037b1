"""Array-likes in, compact 2-D arrays plus an input description out.

Images are kept in the dtype the caller gave (uint8 stays uint8) and are only
flattened, which is a view for contiguous arrays. The float conversion happens
batch by batch on the training device (see ``_data.Preprocess``).
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.utils.validation import validate_data

from .sources import as_image_source

# a flattened vector of d features is read as a side x side image only when the
# side is at least this large; below it the "image" would be noise-sized
MIN_AUTO_IMAGE_SIDE = 8
# the model computes in float32: larger magnitudes would become infinite
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class InputSpec:
    """How the rows of a flattened 2-D array are to be read.

    Attributes
    ----------
    kind : {"image", "vector"}
        Images go to convolutional backbones, vectors to an MLP.
    shape : tuple of int
        ``(C, H, W)`` for images, ``(d,)`` for vectors.
    channels_last : bool
        Whether a flattened image row is stored ``H, W, C`` (True) or
        ``C, H, W`` (False).
    """

    kind: str
    shape: tuple
    channels_last: bool = True

    @property
    def shorter_side(self):
        """The shorter side of an image in pixels; 0 for vectors.

        Image-size rules (views in the read-out, the smallest automatic
        batch) compare it with their own thresholds.
        """
        if self.kind != "image":
            return 0
        return min(self.shape[1:])

    @property
    def array_shape(self):
        """Per-sample shape of an unflattened array in this layout."""
        if self.kind == "vector":
            return self.shape
        c, h, w = self.shape
        return (h, w, c) if self.channels_last else (c, h, w)


def _flatten_images(X):
    """(N, H, W), (N, H, W, C) or (N, C, H, W) arrays to (N, d) and a spec."""
    if X.ndim == 3:
        n, h, w = X.shape
        return X.reshape(n, h * w), InputSpec("image", (1, h, w), True)
    n, a, b, c = X.shape
    if c in (1, 3):
        return X.reshape(n, a * b * c), InputSpec("image", (c, a, b), True)
    if a in (1, 3):
        return X.reshape(n, a * b * c), InputSpec("image", (a, b, c), False)
    raise ValueError(
        f"Cannot tell the channel axis of image array of shape {X.shape}: expected "
        "(n_samples, height, width, channels) or (n_samples, channels, height, width) "
        "with 1 or 3 channels."
    )


def spec_from_image_shape(image_shape, n_features):
    """Input description for flattened rows of ``n_features`` values.

    Parameters
    ----------
    image_shape : "auto", None or tuple of int
        ``(H, W)`` or ``(H, W, C)`` (rows flattened in that order); ``None``
        means plain vectors; ``"auto"`` reads square grayscale or 3-channel
        images when ``n_features`` allows, else vectors.
    n_features : int
        Number of columns of the data.

    Returns
    -------
    spec : InputSpec
    """
    if image_shape is None:
        return InputSpec("vector", (n_features,))
    if isinstance(image_shape, str):  # "auto"
        for channels in (1, 3):
            side = int(round(np.sqrt(n_features / channels)))
            if side >= MIN_AUTO_IMAGE_SIDE and channels * side * side == n_features:
                return InputSpec("image", (channels, side, side), True)
        return InputSpec("vector", (n_features,))
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
        for s in shape
    ):
        raise ValueError(
            "image_shape must be (height, width) or (height, width, channels) with "
            f"positive integers, got {image_shape!r}."
        )
    if int(np.prod(shape)) != n_features:
        raise ValueError(
            f"image_shape={shape} holds {int(np.prod(shape))} values but X has "
            f"{n_features} features per sample."
        )
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    return InputSpec("image", (int(c), int(h), int(w)), True)


def check_input(estimator, X, *, reset, image_size=None, mode="auto"):
    """Validate ``X`` and return it flattened, with its layout if it had one.

    Parameters
    ----------
    estimator : BaseEstimator
        Receives ``n_features_in_`` (and ``feature_names_in_``) when ``reset``.
    X : array-like, DataFrame or images
        Images of ndim 3 or 4, a 2-D array of flattened images or vectors, or
        images that :class:`~skcueco.ImageSource` reads (file paths, a
        folder, PIL images, a torch Dataset).
    reset : bool
        True in ``fit``; False checks consistency with the fitted data.
    image_size : int, tuple of (int, int) or None, default=None
        Size images read by an ImageSource are fitted to (None: the first
        image's); ignored for arrays.
    mode : {"auto", "RGB", "L"}, default="auto"
        Colour mode of images read by an ImageSource; ignored for arrays.

    Returns
    -------
    X2d : ndarray of shape (n_samples, n_features) or ImageSource
        Same dtype as the input when it is numeric; no copy when possible.
        Images from files and the like come back as a lazy ImageSource.
    spec : InputSpec or None
        The layout of 3-D and 4-D input and of an ImageSource; None for 2-D
        input, whose reading the caller decides (:func:`spec_from_image_shape`).
    """
    if sp.issparse(X):
        raise TypeError(
            "Sparse input is not supported: pass a dense array of images or "
            "feature vectors (for instance X.toarray())."
        )
    source = as_image_source(X, image_size=image_size, mode=mode)
    if source is not None:
        _check_source(estimator, source, reset)
        c = 3 if source.mode == "RGB" else 1
        return source, InputSpec("image", (c, *source.image_size), True)
    spec = None
    if isinstance(X, np.ndarray) and X.ndim in (3, 4):
        if X.shape[0] == 0:
            raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}).")
        X, spec = _flatten_images(X)
    elif isinstance(X, np.ndarray) and X.ndim > 4:
        raise ValueError(
            f"Expected 2-D (flattened), 3-D or 4-D image input, got {X.ndim}-D "
            f"array of shape {X.shape}."
        )
    if not reset and _plain_rows(estimator, X):
        check_float32_range(X)
        return X, spec
    X = validate_data(
        estimator,
        X,
        reset=reset,
        dtype="numeric",
        ensure_min_samples=2 if reset else 1,
    )
    _check_dtype(X)
    check_float32_range(X)
    return X, spec


def _plain_rows(estimator, X):
    """Whether ``validate_data(estimator, X, reset=False)`` would return ``X`` as is.

    True for a finite, numeric, 2-D ndarray with the fitted feature count,
    given to an estimator fitted without feature names: the common case of
    ``transform`` on images, where scikit-learn's general checks cost as much
    as embedding one small image. Anything else takes the general path, with
    its errors and warnings.
    """
    return (type(X) is np.ndarray and X.ndim == 2 and X.shape[0] >= 1
            and X.dtype.kind in "iuf"
            and X.shape[1] == getattr(estimator, "n_features_in_", None)
            and not hasattr(estimator, "feature_names_in_")
            and (X.dtype.kind != "f" or bool(np.isfinite(X).all())))


def image_format(spec):
    """``image_size`` and ``mode`` that decode new images like the fitted ones.

    Parameters
    ----------
    spec : InputSpec or None
        The fitted input description.

    Returns
    -------
    kwargs : dict
        Keyword arguments for :func:`check_input`; empty unless ``spec``
        describes 1- or 3-channel images.
    """
    if spec is None or spec.kind != "image" or spec.shape[0] not in (1, 3):
        return {}
    c, h, w = spec.shape
    return {"image_size": (h, w), "mode": "RGB" if c == 3 else "L"}


def _check_source(estimator, source, reset):
    # validate_data cannot look at a lazy source: the same checks by hand
    n_samples, n_features = source.shape
    if reset:
        if n_samples < 2:
            raise ValueError(
                f"Found {n_samples} image(s) while a minimum of 2 is required."
            )
        estimator.n_features_in_ = n_features
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
        return
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and n_features != expected:
        raise ValueError(
            f"X has {n_features} features, but {type(estimator).__name__} is "
            f"expecting {expected} features as input."
        )


def check_float32_range(X):
    """Refuse values that would become infinite when cast to float32.

    Only wider float dtypes can hold them (the largest integers fit); the
    check reads ``X`` twice (its minimum and maximum), without a copy.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Finite numbers.

    Raises
    ------
    ValueError
        If a value's magnitude exceeds the float32 maximum (about 3.4e38).
    """
    if X.dtype.kind != "f" or X.dtype.itemsize <= 4 or X.size == 0:
        return
    largest = max(-float(X.min()), float(X.max()))
    if largest > FLOAT32_MAX:
        raise ValueError(
            f"X holds values beyond the float32 range (magnitude up to {largest:.3g}, "
            f"float32 holds up to {FLOAT32_MAX:.3g}): the model computes in float32, "
            "where they would become infinite. Rescale X."
        )


def _check_dtype(X):
    if X.dtype.kind not in "biuf":
        raise TypeError(
            f"X must hold real numbers (bool, integer or float), got dtype {X.dtype}."
        )

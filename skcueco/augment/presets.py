"""The augmentation presets and the factory behind the ``augmentation`` parameter."""

import numbers

from .base import Augmentation, CallableAugmentation, NoAugmentation
from .image import ImageAugmentation
from .vector import VectorAugmentation

_STRING_OPTIONS = ("auto", "rgb", "grayscale", "vector", "none")


def _image_side(image_size):
    if image_size is None:
        raise ValueError("image_size is required for image augmentations.")
    if isinstance(image_size, numbers.Integral):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def rgb_augmentation(image_size, *, flip=True):
    """CueCo's augmentation recipe for RGB images.

    Random resized crop (scale 0.2-1.0), horizontal flip, colour jitter
    (0.4, 0.4, 0.4, 0.1) with probability 0.8, grayscale with probability 0.2,
    and Gaussian blur only for images larger than 32 px, where it removes
    detail that small images do not have.

    Parameters
    ----------
    image_size : int or tuple of int
        Side, or ``(height, width)``, of the images.
    flip : bool, default=True
        Mirror half of the views horizontally. Turn it off for images whose
        mirror is another class (text, signs).

    Returns
    -------
    augmentation : ImageAugmentation
        The recipe, ready to be called as ``augmentation(x, generator)``.
    """
    h, w = _image_side(image_size)
    return ImageAugmentation(
        crop_scale=(0.2, 1.0),
        flip=flip,
        color_jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p=0.8,
        grayscale_p=0.2,
        blur=min(h, w) > 32,
        blur_p=0.5,
    )


def grayscale_augmentation(image_size=None, *, flip=False):
    """Augmentation recipe for small grayscale images (digits).

    A mild crop (scale 0.5-1.0: a digit is a few pixels and a small crop
    loses it), a small affine (rotation up to 10 degrees, shift up to 10 %),
    brightness and contrast jitter (0.4, 0.4) with probability 0.8 and
    Gaussian noise of std 0.05. No flip by default: a mirrored digit is
    another symbol.

    Parameters
    ----------
    image_size : int or tuple of int or None, default=None
        Accepted for symmetry with :func:`rgb_augmentation`; the recipe does
        not depend on it.
    flip : bool, default=False
        Mirror half of the views horizontally. Turn it on for grayscale
        images of things whose mirror image is the same class (animals,
        objects, clothes): otherwise the embedding keeps which way
        each one faces, and ``predict``'s clusters split along it (see
        "Real images: animal silhouettes" in the method results).

    Returns
    -------
    augmentation : ImageAugmentation
        The recipe, ready to be called as ``augmentation(x, generator)``.

    Examples
    --------
    Grayscale photographs or silhouettes, whose mirror image is the same
    thing, with the rest of the recipe ``augmentation="auto"`` gives them:

    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.augment import grayscale_augmentation
    >>> est = CueCoEmbedder(augmentation=grayscale_augmentation(flip=True))
    >>> est.augmentation.flip, est.augmentation.crop_scale
    (True, (0.5, 1.0))
    """
    return ImageAugmentation(
        crop_scale=(0.5, 1.0),
        flip=flip,
        rotation=10.0,
        translate=0.1,
        color_jitter=(0.4, 0.4, 0.0, 0.0),
        jitter_p=0.8,
        grayscale_p=0.0,
        blur=False,
        noise_std=0.05,
    )


def make_augmentation(augmentation, *, input_kind, n_channels=None, image_size=None):
    """Resolve the ``augmentation`` parameter of the estimators.

    Parameters
    ----------
    augmentation : {"auto", "rgb", "grayscale", "vector", "none"}, \
            Augmentation or callable
        - ``"auto"``: :class:`VectorAugmentation` for vectors; for images,
          :func:`grayscale_augmentation` for 1 channel,
          :func:`rgb_augmentation` for 3 channels, and crop plus flip only
          for other channel counts.
        - ``"rgb"``, ``"grayscale"``, ``"vector"``: that recipe; it must suit
          the input (``"rgb"`` needs 3-channel images, ``"grayscale"`` any
          images, ``"vector"`` vectors).
        - ``"none"``: :class:`NoAugmentation`.
        - An :class:`Augmentation` instance is returned as is; any other
          callable ``func(x) -> Tensor`` is wrapped in
          :class:`CallableAugmentation`.
    input_kind : {"image", "vector"}
        Kind of the training data.
    n_channels : int or None, default=None
        Number of image channels; required for images.
    image_size : int or tuple of int or None, default=None
        Image side or ``(height, width)``; required for images of other than
        one channel (the RGB recipe blurs only images above 32 px).

    Returns
    -------
    augmentation : Augmentation
        The view transform to call as ``augmentation(x, generator)``.
    """
    if input_kind not in ("image", "vector"):
        raise ValueError(f"input_kind must be 'image' or 'vector', got {input_kind!r}.")
    if isinstance(augmentation, str):
        if augmentation not in _STRING_OPTIONS:
            raise ValueError(
                f"augmentation must be one of {', '.join(map(repr, _STRING_OPTIONS))}, "
                f"an Augmentation or a callable; got {augmentation!r}."
            )
        if augmentation == "none":
            return NoAugmentation()
        if input_kind == "vector":
            if augmentation in ("auto", "vector"):
                return VectorAugmentation()
            raise ValueError(
                f"augmentation={augmentation!r} is for images but the input is "
                "vectors; use 'vector', 'auto' or 'none'."
            )
        if augmentation == "vector":
            raise ValueError(
                "augmentation='vector' is for vectors but the input is images; "
                "use 'auto', 'rgb', 'grayscale' or 'none'."
            )
        if n_channels is None:
            raise ValueError("n_channels is required for image input.")
        if augmentation == "grayscale" or (augmentation == "auto" and n_channels == 1):
            return grayscale_augmentation(image_size)
        if augmentation == "rgb" or (augmentation == "auto" and n_channels == 3):
            if n_channels != 3:
                raise ValueError(
                    f"augmentation='rgb' needs 3-channel images, got {n_channels} "
                    "channel(s); use 'auto' or 'grayscale'."
                )
            return rgb_augmentation(image_size)
        # Colour operations have no meaning for other channel counts
        # (e.g. multispectral images), so only geometry is randomised.
        _image_side(image_size)
        return ImageAugmentation(color_jitter=None, jitter_p=0.0, grayscale_p=0.0)
    if isinstance(augmentation, Augmentation):
        if isinstance(augmentation, ImageAugmentation) and input_kind != "image":
            raise ValueError(
                "augmentation is an ImageAugmentation but the input is vectors."
            )
        if isinstance(augmentation, VectorAugmentation) and input_kind != "vector":
            raise ValueError(
                "augmentation is a VectorAugmentation but the input is images."
            )
        return augmentation
    if callable(augmentation):
        return CallableAugmentation(augmentation)
    raise TypeError(
        f"augmentation must be one of {', '.join(map(repr, _STRING_OPTIONS))}, "
        f"an Augmentation or a callable; got {type(augmentation).__name__}."
    )

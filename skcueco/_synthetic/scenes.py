"""RGB scenes: a textured object over a textured background, lit unevenly, partly hidden.

The classes are the shapes of :func:`~skcueco._synthetic.make_shapes`. Every
image draws a background texture (stripes, a checkerboard or smooth blobs
in two colours), the object's own texture and colours, its pose, an uneven
coloured light and, often, an occluder in front of the object. Colour,
texture and lighting say nothing about the class; the object is lighter
than the background in half the images and darker in the other half.
"""

import numpy as np
from sklearn.utils import check_random_state

from .shapes import SHAPE_NAMES, check_arguments, draw_poses, shape_coverage

TEXTURES = ("stripes", "checker", "blobs")

# nuisance ranges, in units of the image side unless noted
_RADIUS = (0.26, 0.38)
_CENTER = (0.38, 0.62)
_STROKE = (0.08, 0.14)
_MIN_STROKE_PX = 1.5
_DARK, _LIGHT = (0.0, 0.45), (0.55, 1.0)   # colour ranges of the two sides
_PERIOD = (0.12, 0.4)          # texture period
_OCCLUDED = 0.6                # fraction of images with an occluder
_OCCLUDER = (0.2, 0.4)         # its width and height
_BRIGHTNESS = (0.6, 1.3)       # overall light
_LIGHT_RAMP = (0.0, 0.6)       # amplitude of its linear change across the image
_CAST = (0.75, 1.25)           # per-channel gain of a coloured light
_NOISE = (0.01, 0.05)


def make_scenes(n_samples=3000, *, image_size=32, n_classes=8, random_state=None):
    """Generate RGB images of textured shapes in textured, unevenly lit scenes.

    Class ``k`` is the ``k``-th shape of ``SHAPE_NAMES`` (as in
    :func:`make_shapes`). Each image has a background texture and an object
    texture (stripes, checkerboard or blobs, each in two colours and its own
    scale and orientation), a random pose, a light that changes brightness
    and colour across the image, and in 60 % of the images a rectangle of
    another colour in front of part of the object.

    Parameters
    ----------
    n_samples : int, default=3000
        Number of images. Classes are balanced: their sizes differ by at
        most one.
    image_size : int, default=32
        Height and width of the square images, at least 8.
    n_classes : int, default=8
        Number of shape classes, from 2 to 10.
    random_state : int, RandomState instance or None, default=None
        Seeds every random choice; the same seed gives the same images.

    Returns
    -------
    X : ndarray of shape (n_samples, image_size, image_size, 3), dtype uint8
        The images, channels last.
    y : ndarray of shape (n_samples,), dtype int64
        Class index of each image, in ``[0, n_classes)``, in random order.

    Examples
    --------
    >>> from skcueco._synthetic import make_scenes
    >>> X, y = make_scenes(40, image_size=16, random_state=0)
    >>> X.shape, X.dtype
    ((40, 16, 16, 3), dtype('uint8'))
    """
    check_arguments(n_samples, image_size, n_classes, SHAPE_NAMES, "shapes")
    rng = check_random_state(random_state)
    n, size = int(n_samples), int(image_size)

    y, radius, center, angle, stroke = draw_poses(
        rng, n, size, n_classes, _RADIUS, _CENTER, _STROKE, _MIN_STROKE_PX)

    ii, jj = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    pixels = np.stack([jj.ravel(), ii.ravel()], axis=1)
    unit = pixels / size - 0.5                                       # (N, 2) in [-0.5, 0.5]
    coverage = shape_coverage(y, radius, center, angle, stroke, pixels, n_classes)

    light_object = rng.uniform(size=n) < 0.5
    background = _textured(rng, unit, np.where(light_object, 0, 1))
    foreground = _textured(rng, unit, np.where(light_object, 1, 0))
    images = background + coverage[..., None] * (foreground - background)

    # an occluder: a rectangle of one colour near the object
    occluded = rng.uniform(size=n) < _OCCLUDED
    half = rng.uniform(*_OCCLUDER, size=(n, 2)) * size / 2
    offset = rng.uniform(-1.0, 1.0, size=(n, 2)) * radius[:, None]
    colour = rng.uniform(0.0, 1.0, size=(n, 3))
    q = np.abs(pixels[None] - (center + offset)[:, None, :]) - half[:, None, :]
    box = np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(axis=-1), 0.0)
    hidden = np.clip(0.5 - box, 0.0, 1.0) * occluded[:, None]
    images += hidden[..., None] * (colour[:, None, :] - images)

    # uneven, coloured light
    brightness = rng.uniform(*_BRIGHTNESS, size=n)
    ramp = rng.uniform(*_LIGHT_RAMP, size=n)
    direction = rng.uniform(0.0, 2 * np.pi, size=n)
    towards = np.stack([np.cos(direction), np.sin(direction)], axis=1)
    gain = brightness[:, None] * (1.0 + ramp[:, None] * (towards @ unit.T))
    cast = rng.uniform(*_CAST, size=(n, 3))
    images *= gain[..., None] * cast[:, None, :]
    images += rng.uniform(*_NOISE, size=n)[:, None, None] * rng.standard_normal(images.shape)
    X = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return X.reshape(n, size, size, 3), y


def _textured(rng, unit, side):
    """One texture per image in two colours of ``side`` (0 dark, 1 light): ``(n, N, 3)``."""
    n = len(side)
    low = np.where(side[:, None] == 1, _LIGHT[0], _DARK[0])
    high = np.where(side[:, None] == 1, _LIGHT[1], _DARK[1])
    colours = low[:, None] + rng.uniform(size=(n, 2, 3)) * (high - low)[:, None]
    kind = rng.randint(len(TEXTURES), size=n)
    period = rng.uniform(*_PERIOD, size=n)
    theta = rng.uniform(0.0, np.pi, size=n)
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 3))
    waves = rng.uniform(0.0, 2 * np.pi, size=(n, 3))               # blob directions
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    u = c * unit[None, :, 0] + s * unit[None, :, 1]                # (n, N) along theta
    v = -s * unit[None, :, 0] + c * unit[None, :, 1]
    k = 2 * np.pi / period[:, None]
    stripes = np.sin(k * u + phase[:, :1])
    checker = np.sin(k * u + phase[:, :1]) * np.sin(k * v + phase[:, 1:2])
    blobs = sum(np.sin(k / 2 * (np.cos(waves[:, j:j + 1]) * unit[None, :, 0]
                                + np.sin(waves[:, j:j + 1]) * unit[None, :, 1]) + phase[:, j:j + 1])
                for j in range(3)) / 1.5
    wave = np.choose(kind[:, None], [stripes, checker, blobs])
    mix = np.clip(0.5 + 2.0 * wave, 0.0, 1.0)                      # soft-edged two-tone pattern
    return colours[:, None, 0] + mix[..., None] * (colours[:, None, 1] - colours[:, None, 0])

"""Synthetic images with known classes: shapes under nuisance variation.

The classes differ only in the shape drawn; position, size, rotation, stroke
width, intensity or colour, background gradient and noise vary from image to
image. Raw pixels therefore separate the classes only in part, while a
representation invariant to those nuisances separates them well. Rendering
uses signed distance functions in numpy (anti-aliased over one pixel), so
the images depend on nothing but ``random_state``.
"""

import numbers

import numpy as np
from sklearn.utils import check_random_state

# order in which classes are taken: the first n_classes are used
SHAPE_NAMES = (
    "circle", "ring", "square", "triangle", "cross", "diamond", "bar", "star",
    "hexagon", "chevron",
)

# nuisance ranges, in units of the image side unless noted
_RADIUS = (0.24, 0.36)      # circumradius of the shape
_CENTER = (0.38, 0.62)      # centre coordinates
_STROKE = (0.06, 0.12)      # stroke width of outlined shapes
_BACKGROUND = (0.0, 0.3)    # background level (per channel for RGB)
_CONTRAST = (0.4, 0.8)      # foreground minus background
_GRADIENT = (0.0, 0.15)     # amplitude of a linear background ramp
_NOISE = (0.01, 0.06)       # standard deviation of Gaussian pixel noise
_MIN_STROKE_PX = 1.2        # thinner strokes vanish after anti-aliasing


def make_shapes(n_samples=3000, *, image_size=28, n_channels=1, n_classes=8,
                random_state=None):
    """Generate images of shapes with random pose, stroke and appearance.

    Class ``k`` is the ``k``-th of: circle (filled), ring, square (outline),
    triangle (filled), cross (filled), diamond (filled rhombus), bar
    (filled), star (filled), hexagon (outline) and chevron (a stroked "V").
    Every image draws its own position, size, rotation, stroke width,
    foreground and background intensity (colours for RGB), background
    gradient and pixel noise.

    Parameters
    ----------
    n_samples : int, default=3000
        Number of images. Classes are balanced: their sizes differ by at
        most one.
    image_size : int, default=28
        Height and width of the square images, at least 8.
    n_channels : {1, 3}, default=1
        1 for grayscale images, 3 for RGB images.
    n_classes : int, default=8
        Number of shape classes, from 2 to 10.
    random_state : int, RandomState instance or None, default=None
        Seeds every random choice; the same seed gives the same images.

    Returns
    -------
    X : ndarray of shape (n_samples, image_size, image_size) or \
            (n_samples, image_size, image_size, 3), dtype uint8
        The images, channels last for RGB.
    y : ndarray of shape (n_samples,), dtype int64
        Class index of each image, in ``[0, n_classes)``, in random order.

    Examples
    --------
    >>> from skcueco._synthetic import make_shapes
    >>> X, y = make_shapes(100, image_size=16, n_channels=3, random_state=0)
    >>> X.shape, X.dtype, y[:5]
    ((100, 16, 16, 3), dtype('uint8'), array([...]))
    """
    check_arguments(n_samples, image_size, n_classes, SHAPE_NAMES, "shapes")
    if n_channels not in (1, 3) or isinstance(n_channels, bool):
        raise ValueError(f"n_channels must be 1 (grayscale) or 3 (RGB); got {n_channels!r}.")
    rng = check_random_state(random_state)
    n, size = int(n_samples), int(image_size)

    y, radius, center, angle, stroke = draw_poses(
        rng, n, size, n_classes, _RADIUS, _CENTER, _STROKE, _MIN_STROKE_PX)
    background = rng.uniform(*_BACKGROUND, size=(n, n_channels))
    if n_channels == 1:
        tint = np.ones((n, 1))
    else:
        # a random hue, brighter than the background in every channel so the
        # shape stays visible in any single channel and in grayscale
        tint = rng.uniform(0.2, 1.0, size=(n, 3))
        tint /= tint.max(axis=1, keepdims=True)
    foreground = background + rng.uniform(*_CONTRAST, size=(n, 1)) * tint
    ramp_amplitude = rng.uniform(*_GRADIENT, size=n)
    ramp_angle = rng.uniform(0.0, 2 * np.pi, size=n)
    noise = rng.uniform(*_NOISE, size=n)

    # pixel centres, (size*size, 2) as (x, y)
    ii, jj = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    pixels = np.stack([jj.ravel(), ii.ravel()], axis=1)

    coverage = shape_coverage(y, radius, center, angle, stroke, pixels, n_classes)

    unit = pixels / size - 0.5
    direction = np.stack([np.cos(ramp_angle), np.sin(ramp_angle)], axis=1)
    ramp = ramp_amplitude[:, None] * (direction @ unit.T)           # (n, size*size)
    base = background[:, None, :] + ramp[..., None]
    images = base + coverage[..., None] * (foreground - background)[:, None, :]
    images += noise[:, None, None] * rng.standard_normal(images.shape)
    X = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    X = X.reshape(n, size, size, n_channels)
    return (X[..., 0] if n_channels == 1 else X), y


def shape_coverage(y, radius, center, angle, stroke, pixels, n_classes):
    """Anti-aliased ink coverage in [0, 1] of each image's shape, ``(n, n_pixels)``.

    ``pixels`` are the pixel centres ``(n_pixels, 2)`` as (x, y); ``radius``,
    ``center``, ``angle`` and ``stroke`` give each image's pose in pixels
    (radians for ``angle``); image ``i`` draws shape ``SHAPE_NAMES[y[i]]``.
    """
    coverage = np.zeros((len(y), len(pixels)))
    for k in range(n_classes):
        idx = np.flatnonzero(y == k)
        if idx.size == 0:
            continue
        # pixel coordinates in the shape's frame: centred, unrotated, unit radius
        rel = pixels[None] - center[idx, None, :]
        cos, sin = np.cos(angle[idx])[:, None], np.sin(angle[idx])[:, None]
        local = np.stack(
            [cos * rel[..., 0] + sin * rel[..., 1], -sin * rel[..., 0] + cos * rel[..., 1]],
            axis=-1,
        ) / radius[idx, None, None]
        # signed distances scale with the radius: back to pixels
        half_stroke = (stroke[idx] / radius[idx] / 2)[:, None]
        dist = _SHAPES[SHAPE_NAMES[k]](local, half_stroke) * radius[idx, None]
        coverage[idx] = np.clip(0.5 - dist, 0.0, 1.0)
    return coverage


def draw_poses(rng, n, size, n_classes, radius, center, stroke, min_stroke):
    """Balanced classes in random order and a pose per image, in pixels.

    ``radius``, ``center`` and ``stroke`` are ranges in units of the image
    side; returns ``(y, radius, center, angle, stroke)``.
    """
    y = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    radius = rng.uniform(*radius, size=n) * size
    center = rng.uniform(*center, size=(n, 2)) * size
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    stroke = np.maximum(rng.uniform(*stroke, size=n) * size, min_stroke)
    return y, radius, center, angle, stroke


def check_arguments(n_samples, image_size, n_classes, names, what):
    """The arguments every generator shares; ``names`` are its classes."""
    check_int(n_samples, "n_samples", 1)
    check_int(image_size, "image_size", 8)
    check_int(n_classes, "n_classes", 2)
    if n_classes > len(names):
        raise ValueError(
            f"n_classes must be <= {len(names)} (the number of {what}); got {n_classes}."
        )


def check_int(value, name, low):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


# -- signed distance functions ---------------------------------------------------
# Each maps points of shape (m, N, 2) in the shape's unit frame and half stroke
# widths of shape (m, 1) to signed distances (m, N): negative inside the ink.


def _polygon_sdf(points, vertices):
    """Signed distance to a closed polygon (negative inside, even-odd rule)."""
    start = vertices
    edge = np.roll(vertices, -1, axis=0) - vertices
    rel = points[..., None, :] - start                             # (m, N, V, 2)
    t = np.clip((rel * edge).sum(-1) / (edge * edge).sum(-1), 0.0, 1.0)
    dist = np.linalg.norm(rel - t[..., None] * edge, axis=-1).min(axis=-1)
    py, px = points[..., 1:2], points[..., 0:1]
    y0, y1 = start[:, 1], start[:, 1] + edge[:, 1]
    straddles = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = start[:, 0] + edge[:, 0] * (py - y0) / edge[:, 1]
    inside = (straddles & (px < x_cross)).sum(-1) % 2 == 1
    return np.where(inside, -dist, dist)


def _polyline_distance(points, vertices):
    """Unsigned distance to an open polyline."""
    start, edge = vertices[:-1], np.diff(vertices, axis=0)
    rel = points[..., None, :] - start
    t = np.clip((rel * edge).sum(-1) / (edge * edge).sum(-1), 0.0, 1.0)
    return np.linalg.norm(rel - t[..., None] * edge, axis=-1).min(axis=-1)


def _box_sdf(points, half_width, half_height):
    q = np.abs(points) - np.array([half_width, half_height])
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    return outside + np.minimum(q.max(axis=-1), 0.0)


def _regular(n_vertices, radius, phase=np.pi / 2):
    a = phase + 2 * np.pi * np.arange(n_vertices) / n_vertices
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _star(n_points=5, outer=1.0, inner=0.45):
    a = np.pi / 2 + np.pi * np.arange(2 * n_points) / n_points
    r = np.where(np.arange(2 * n_points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


_SQUARE = _regular(4, 0.85, phase=np.pi / 4)
_TRIANGLE = _regular(3, 1.0)
_DIAMOND = np.array([[0.0, 1.0], [0.55, 0.0], [0.0, -1.0], [-0.55, 0.0]])
_STAR = _star()
_HEXAGON = _regular(6, 0.85)
_CHEVRON = np.array([[-0.8, 0.55], [0.0, -0.55], [0.8, 0.55]])

_SHAPES = {
    "circle": lambda p, h: np.linalg.norm(p, axis=-1) - 0.8,
    "ring": lambda p, h: np.abs(np.linalg.norm(p, axis=-1) - 0.75) - h,
    "square": lambda p, h: np.abs(_polygon_sdf(p, _SQUARE)) - h,
    "triangle": lambda p, h: _polygon_sdf(p, _TRIANGLE),
    "cross": lambda p, h: np.minimum(_box_sdf(p, 1.0, 0.26), _box_sdf(p, 0.26, 1.0)),
    "diamond": lambda p, h: _polygon_sdf(p, _DIAMOND),
    "bar": lambda p, h: _box_sdf(p, 1.0, 0.24),
    "star": lambda p, h: _polygon_sdf(p, _STAR),
    "hexagon": lambda p, h: np.abs(_polygon_sdf(p, _HEXAGON)) - h,
    "chevron": lambda p, h: _polyline_distance(p, _CHEVRON) - h,
}

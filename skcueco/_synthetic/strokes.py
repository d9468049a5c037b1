"""Handwriting-like glyphs: class-specific letters drawn with a random pen.

Each class is a glyph made of a few strokes (open polylines and arcs) in a
unit frame. Every image draws the glyph with its own hand: an elastic
deformation (a smooth random displacement of the whole glyph), slant,
width and height, a small rotation, position, stroke thickness and ink
intensity, as a pen on paper would vary them. The classes differ only in
the glyph; the strokes of two classes overlap a lot in pixel space (``C``
is ``O`` with a gap, ``N`` a ``Z`` turned a quarter), so pixels separate
them only in part.

With ``n_forms=2`` each glyph is written in one of two forms, as people
write a figure 4 open or closed or a 7 with or without a bar: the two forms
of a class share most of their strokes and differ in one (a closed top, a
bar, a curled foot, a tail). Each class is then two groups of images, which
a clustering must join while keeping the classes apart.
"""

import numpy as np
from sklearn.utils import check_random_state

from .shapes import check_arguments

# class order: the first n_classes are used
GLYPH_NAMES = ("C", "O", "S", "L", "T", "X", "Z", "N", "U", "4")

# nuisance ranges, in units of the image side unless noted
_HALF_HEIGHT = (0.30, 0.38)   # half the glyph's height
_ASPECT = (0.7, 1.1)          # width scale relative to the height
_CENTER = (0.42, 0.58)        # centre coordinates
_SLANT = (-0.45, 0.35)        # horizontal shear per unit of height
_ROTATION = (-0.2, 0.2)       # radians
_WARP = (0.04, 0.12)          # amplitude of the elastic warp, glyph units
_WARP_FREQUENCY = (1.0, 2.5)  # its spatial frequency, radians per glyph unit
_THICKNESS = (0.04, 0.12)     # stroke width
_INK = (0.6, 1.0)             # ink intensity on a dark page
_PAGE = (0.0, 0.08)           # page intensity
_NOISE = (0.0, 0.03)          # standard deviation of Gaussian pixel noise
_MIN_THICKNESS_PX = 1.0
_STEP = 0.08                  # strokes are resampled at this spacing before warping


def make_strokes(n_samples=3000, *, image_size=28, n_classes=10, n_forms=1,
                 random_state=None):
    """Generate grayscale images of handwriting-like glyphs.

    Class ``k`` is the ``k``-th glyph of ``GLYPH_NAMES``: the letters C, O,
    S, L, T, X, Z, N, U and the figure 4. Every image draws its own elastic
    deformation, slant, width, height, rotation, position, stroke
    thickness, ink and page intensity, and pixel noise. Light ink on a dark
    page, as in scanned digit sets.

    Parameters
    ----------
    n_samples : int, default=3000
        Number of images. Classes are balanced: their sizes differ by at
        most one.
    image_size : int, default=28
        Height and width of the square images, at least 8.
    n_classes : int, default=10
        Number of glyph classes, from 2 to 10.
    n_forms : {1, 2}, default=1
        Ways each glyph is written. With 2, every image draws one of its
        class's two forms with equal probability; the images of ``n_forms=1``
        are its first form.
    random_state : int, RandomState instance or None, default=None
        Seeds every random choice; the same seed gives the same images.

    Returns
    -------
    X : ndarray of shape (n_samples, image_size, image_size), dtype uint8
        The images.
    y : ndarray of shape (n_samples,), dtype int64
        Class index of each image, in ``[0, n_classes)``, in random order.

    Examples
    --------
    >>> from skcueco._synthetic import make_strokes
    >>> X, y = make_strokes(50, image_size=16, random_state=0)
    >>> X.shape, X.dtype
    ((50, 16, 16), dtype('uint8'))
    """
    check_arguments(n_samples, image_size, n_classes, GLYPH_NAMES, "glyphs")
    if isinstance(n_forms, (bool, np.bool_)) or n_forms not in (1, 2):
        raise ValueError(f"n_forms must be 1 or 2, got {n_forms!r}")
    rng = check_random_state(random_state)
    n, size = int(n_samples), int(image_size)

    y = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    half_height = rng.uniform(*_HALF_HEIGHT, size=n) * size
    aspect = rng.uniform(*_ASPECT, size=n)
    center = rng.uniform(*_CENTER, size=(n, 2)) * size
    slant = rng.uniform(*_SLANT, size=n)
    rotation = rng.uniform(*_ROTATION, size=n)
    warp = rng.uniform(*_WARP, size=(n, 2, 1))
    frequency = rng.uniform(*_WARP_FREQUENCY, size=(n, 2, 2)) * rng.choice([-1, 1], (n, 2, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 2))
    thickness = np.maximum(rng.uniform(*_THICKNESS, size=n) * size, _MIN_THICKNESS_PX)
    ink = rng.uniform(*_INK, size=n)
    page = rng.uniform(*_PAGE, size=n)
    noise = rng.uniform(*_NOISE, size=n)
    # drawn last, so that one form gives the images it always gave
    form = rng.randint(n_forms, size=n) if n_forms > 1 else np.zeros(n, dtype=int)

    ii, jj = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    pixels = np.stack([jj.ravel(), ii.ravel()], axis=1)           # (x, y), y downwards
    images = np.empty((n, size * size))
    for i in range(n):
        starts, ends = _GLYPH_SEGMENTS[GLYPH_NAMES[y[i]]][form[i]]
        pts = np.concatenate([starts, ends])
        # elastic warp: each coordinate moves along a smooth wave of the other ones
        pts = pts + warp[i].T * np.sin(pts @ frequency[i].T + phase[i])
        # slant, width, rotation, then to pixels (the glyph frame has y upwards)
        pts = pts * np.array([aspect[i], 1.0])
        pts[:, 0] += slant[i] * pts[:, 1]
        c, s = np.cos(rotation[i]), np.sin(rotation[i])
        pts = pts @ np.array([[c, s], [-s, c]])
        pts = center[i] + pts * np.array([1.0, -1.0]) * half_height[i]
        a, b = np.split(pts, 2)
        dist = _segment_distance(pixels, a, b)
        coverage = np.clip(0.5 - (dist - thickness[i] / 2), 0.0, 1.0)
        images[i] = page[i] + coverage * (ink[i] - page[i])
    images += noise[:, None] * rng.standard_normal(images.shape)
    X = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return X.reshape(n, size, size), y


def _segment_distance(points, a, b):
    """Distance of each of ``points`` (N, 2) to the nearest segment ``a[j] -> b[j]``."""
    edge = b - a
    rel = points[:, None, :] - a[None]                               # (N, S, 2)
    t = np.clip((rel * edge).sum(-1) / np.maximum((edge * edge).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(rel - t[..., None] * edge, axis=-1).min(axis=1)


# -- the glyphs ----------------------------------------------------------------
# Strokes in a frame where the glyph spans about [-0.6, 0.6] x [-1, 1], y upwards.


def _arc(cx, cy, rx, ry, start, stop):
    """Points of an elliptic arc from ``start`` to ``stop`` degrees (either direction)."""
    n = max(2, int(np.ceil(abs(stop - start) / 15.0)) + 1)
    a = np.radians(np.linspace(start, stop, n))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _line(*points):
    return np.array(points, dtype=float)


_GLYPHS = {
    "C": [_arc(0.05, 0.0, 0.6, 0.9, 50, 310)],
    "O": [_arc(0.0, 0.0, 0.55, 0.9, 90, 450)],
    "S": [np.concatenate([_arc(0.0, 0.45, 0.5, 0.45, 20, 270),
                          _arc(0.0, -0.45, 0.5, 0.45, 90, -160)])],
    "L": [_line((-0.45, 0.9), (-0.45, -0.9), (0.55, -0.9))],
    "T": [_line((-0.6, 0.9), (0.6, 0.9)), _line((0.0, 0.9), (0.0, -0.9))],
    "X": [_line((-0.55, 0.9), (0.55, -0.9)), _line((0.55, 0.9), (-0.55, -0.9))],
    "Z": [_line((-0.55, 0.9), (0.55, 0.9), (-0.55, -0.9), (0.6, -0.9))],
    "N": [_line((-0.5, -0.9), (-0.5, 0.9), (0.5, -0.9), (0.5, 0.9))],
    "U": [np.concatenate([_line((-0.5, 0.9)), _arc(0.0, -0.35, 0.5, 0.55, 180, 360),
                          _line((0.5, 0.9))])],
    "4": [_line((0.25, -0.95), (0.25, 0.95), (-0.6, -0.3), (0.65, -0.3))],
}


def _resample(stroke, step=_STEP):
    """The polyline with vertices at most ``step`` apart, so that a warp bends it."""
    out = [stroke[:1]]
    for p, q in zip(stroke[:-1], stroke[1:]):
        k = max(1, int(np.ceil(np.linalg.norm(q - p) / step)))
        out.append(p + (q - p) * (np.arange(1, k + 1) / k)[:, None])
    return np.concatenate(out)


def _segments(strokes):
    """``(starts, ends)`` of the resampled segments of a glyph's strokes."""
    pieces = [_resample(s) for s in strokes]
    return (np.concatenate([p[:-1] for p in pieces]), np.concatenate([p[1:] for p in pieces]))


# The second form of each glyph: most strokes of the first, one changed or added.
_SECOND_FORMS = {
    "C": _GLYPHS["C"] + [_line((0.45, 0.7), (0.5, 0.35))],                  # a serif
    "O": [_arc(0.0, 0.0, 0.55, 0.9, 90, 450), _line((0.0, 0.9), (0.4, 1.0))],  # a lead-in
    "S": [_line((0.5, 0.9), (-0.5, 0.9), (-0.5, 0.0), (0.5, 0.0), (0.5, -0.9),
                (-0.5, -0.9))],                                            # angular
    "L": [np.concatenate([_line((-0.45, 0.9)), _arc(-0.05, -0.5, 0.4, 0.4, 180, 270),
                          _line((0.55, -0.9))])],                          # a curved foot
    "T": [_line((-0.6, 0.9), (0.6, 0.9)),
          np.concatenate([_line((0.0, 0.9)), _arc(-0.3, -0.6, 0.3, 0.3, 0, -180)])],  # a hook
    "X": _GLYPHS["X"] + [_line((-0.3, 0.0), (0.3, 0.0))],                   # a bar
    "Z": _GLYPHS["Z"] + [_line((-0.35, 0.0), (0.35, 0.0))],                 # a bar
    "N": _GLYPHS["N"] + [_line((-0.7, 0.9), (-0.5, 0.9)), _line((0.5, -0.9), (0.7, -0.9))],
    "U": _GLYPHS["U"] + [_line((0.5, 0.9), (0.5, -0.9))],                   # a stem
    "4": [_line((-0.5, 0.95), (-0.5, -0.3), (0.65, -0.3)),
          _line((0.25, 0.95), (0.25, -0.95))],                              # open
}
_GLYPH_SEGMENTS = {name: (_segments(strokes), _segments(_SECOND_FORMS[name]))
                   for name, strokes in _GLYPHS.items()}

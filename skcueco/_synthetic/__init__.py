"""Generated image sets with known classes, for tests and benchmarks.

Three families, each with nuisances that raw pixels do not see through:

- :func:`make_shapes`: geometric shapes under pose, stroke and lighting
  changes (grayscale or RGB);
- :func:`make_strokes`: handwriting-like glyphs drawn with a random pen
  (thickness, slant, elastic deformation, position);
- :func:`make_scenes`: RGB scenes, the shapes filled with a texture over a
  textured background, under uneven coloured lighting and partly occluded.

Everything is rendered in numpy from ``random_state`` alone, so a set is the
same on every machine.
"""

from .scenes import make_scenes
from .shapes import SHAPE_NAMES, make_shapes
from .strokes import GLYPH_NAMES, make_strokes

__all__ = ["GLYPH_NAMES", "SHAPE_NAMES", "make_scenes", "make_shapes", "make_strokes"]

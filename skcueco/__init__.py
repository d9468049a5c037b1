"""skcueco: self-supervised image embeddings with Cluster Contrast (CueCo).

Scikit-learn estimators that learn representations from unlabeled images:

- :class:`CueCoEmbedder` — a transformer; ``fit`` trains CueCo, ``transform``
  returns the learned embeddings.
- :class:`CueCoClassifier` — CueCo pretraining on all rows, then a linear
  (or any scikit-learn) head on the labeled ones.
- :class:`ImageSource` — image files, folders, PIL images or a torch Dataset,
  decoded lazily and read like a uint8 array by both estimators.
"""

from ._classifier import CueCoClassifier
from ._embedder import CueCoEmbedder
from .data.sources import ImageSource
from ._version import __version__

__all__ = ["CueCoClassifier", "CueCoEmbedder", "ImageSource", "__version__"]

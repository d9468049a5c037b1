"""skcueco: self-supervised image embeddings with Cluster Contrast (CueCo).

Scikit-learn estimators that learn representations from unlabeled images:

- :class:`CueCoEmbedder` — a transformer; ``fit`` trains CueCo, ``transform``
  returns the learned embeddings.
- :class:`CueCoClassifier` — CueCo pretraining on all rows, then a linear
  (or any scikit-learn) head on the labeled ones.
"""

from ._classifier import CueCoClassifier
from ._embedder import CueCoEmbedder
from ._version import __version__

__all__ = ["CueCoClassifier", "CueCoEmbedder", "__version__"]

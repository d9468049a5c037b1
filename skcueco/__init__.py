"""skcueco: self-supervised image embeddings with Cluster Contrast (CueCo).

Scikit-learn estimators that learn representations from unlabeled images:

- :class:`CueCoEmbedder` — a transformer; ``fit`` trains CueCo, ``transform``
  returns the learned embeddings.
"""

from ._embedder import CueCoEmbedder
from ._version import __version__

__all__ = ["CueCoEmbedder", "__version__"]

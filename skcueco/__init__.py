"""skcueco: self-supervised image embeddings with Cluster Contrast (CueCo).

Scikit-learn estimators that learn representations from unlabeled images:

- :class:`CueCoEmbedder` — a transformer; ``fit`` trains CueCo, ``transform``
  returns the learned embeddings.
- :class:`CueCoClassifier` — CueCo pretraining on all rows, then a head:
  label propagation over the embeddings by default, a linear head, or any
  scikit-learn classifier.
- :class:`ImageSource` — image files, folders, PIL images or a torch Dataset,
  decoded lazily and read like a uint8 array by both estimators.

The estimators are imported on first use (PEP 562), so that
``import skcueco`` and ``python -m skcueco --help`` do not pay for importing
PyTorch until a model is needed.
"""

import importlib

from ._version import __version__

_LAZY = {
    "CueCoClassifier": "._classifier",
    "CueCoEmbedder": "._embedder",
    "ImageSource": ".data.sources",
}

__all__ = ["CueCoClassifier", "CueCoEmbedder", "ImageSource", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

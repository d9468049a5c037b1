"""Sphinx configuration of the skcueco documentation.

Build with ``pip install -e ".[docs]"`` and then
``python -m sphinx -b html docs docs/_build/html``. The build needs no
network. Set ``SKCUECO_DOCS_INTERSPHINX=1`` to link to the scikit-learn,
NumPy, PyTorch, pandas and Python docs (that fetches their inventories).
"""

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# document the source tree next to this folder, installed or not
sys.path.insert(0, str(ROOT))

_VERSION_FILE = ROOT / "skcueco" / "_version.py"
release = re.search(
    r'__version__ = "([^"]+)"', _VERSION_FILE.read_text(encoding="utf-8")
).group(1)
version = ".".join(release.split(".")[:2])

project = "skcueco"
author = "the skcueco developers"
copyright = "the skcueco developers"

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
]

if os.environ.get("SKCUECO_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "pandas": ("https://pandas.pydata.org/docs", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
    }

root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []

# autodoc: members in source order, signatures without the long default lists
autodoc_member_order = "bysource"
autodoc_typehints = "none"

# numpydoc renders the Parameters / Attributes sections; the API page lists
# the members itself, so no autosummary tables of members are generated
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_title = f"skcueco {release}"
html_static_path = []

"""Sphinx configuration of the skcueco documentation.

Install the tools with ``pip install -e ".[docs]"``, then, from the
repository root:

- ``python -m sphinx -b html docs docs/_build/html`` builds the site and runs
  every example of the gallery (``examples/plot_*.py``), with their figures
  and run times (a few minutes on a CPU);
- ``SKCUECO_DOCS_EXECUTE=0 python -m sphinx -b html docs docs/_build/html``
  (or ``-D plot_gallery=0``) builds it without running them: the gallery
  shows the code and the text but no figures, in seconds.

The build needs no network, and neither do the pages it writes: MathJax is
copied into the site. ``SKCUECO_DOCS_INTERSPHINX=1`` links to the
scikit-learn, NumPy, PyTorch, pandas and Python documentation, which fetches
their inventories.
"""

import importlib
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
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
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

# -- maths ----------------------------------------------------------------------
# MathJax renders the maths; sphinx-mathjax-offline (in the docs extras) ships
# MathJax 3 and copies it into the site's _static/mathjax, so the pages show
# their maths without network, opened from disk too. Without it Sphinx loads
# MathJax from a CDN, and offline the maths stays LaTeX source.
try:
    importlib.import_module("sphinx-mathjax-offline")
except ImportError:
    print('docs: sphinx-mathjax-offline is not installed (pip install -e ".[docs]"); '
          "the maths will load MathJax from the network", file=sys.stderr)
else:
    extensions.append("sphinx-mathjax-offline")

if os.environ.get("SKCUECO_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "pandas": ("https://pandas.pydata.org/docs", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
        "matplotlib": ("https://matplotlib.org/stable", None),
    }

root_doc = "index"
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json"]
templates_path = ["_templates"]

# -- API reference ------------------------------------------------------------
# One page per public module (docs/api/<module>.rst), each with an
# autosummary table; autosummary writes one page per name into
# docs/generated/. A module that cannot be imported in this build is left out
# (its page is excluded) instead of failing the build.
API_MODULES = [
    "skcueco", "skcueco.augment", "skcueco.backbones", "skcueco.callbacks",
    "skcueco.datasets", "skcueco.evaluation", "skcueco.inspection", "skcueco.nn",
    "skcueco.recipes",
]
missing_api_modules = []
for _module in API_MODULES:
    try:
        importlib.import_module(_module)
    except ImportError as exc:
        print(f"docs: {_module} cannot be imported ({exc}); its API page is left out",
              file=sys.stderr)
        missing_api_modules.append(_module)
        exclude_patterns.append(f"api/{_module}.rst")

autosummary_generate = True
autosummary_imported_members = True

# autodoc: members in source order, signatures without the long default lists
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"exclude-members": "__init__"}

# numpydoc renders the Parameters / Attributes sections; the class template
# lists the methods itself, so numpydoc adds no member tables
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- the gallery --------------------------------------------------------------
# Every examples/plot_*.py is run and its figures and run time are shown.
# SKCUECO_DOCS_EXECUTE=0 (or -D plot_gallery=0) renders the examples
# without running them.
EXECUTE_GALLERY = os.environ.get("SKCUECO_DOCS_EXECUTE", "1") != "0"
plot_gallery = str(EXECUTE_GALLERY)

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",  # run every plot_*.py
    "ignore_pattern": r"__init__\.py",
    "plot_gallery": str(EXECUTE_GALLERY),
    "within_subsection_order": "FileNameSortKey",
    "min_reported_time": 0,  # show every example's run time
    # the per-example run times only: the summary pages of all run times
    # (sg_execution_times) load their table scripts from a CDN
    "write_computation_times": False,
    "download_all_examples": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "matplotlib_animations": False,
    "doc_module": ("skcueco",),
    "backreferences_dir": "generated/backreferences",
    "show_memory": False,
    "remove_config_comments": True,
}

# -- HTML -----------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skcueco {release}"
html_static_path = []
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "getting_started": [], "changelog": []}
html_show_sourcelink = False


def _tag_a_gallery_not_run(app, config):
    # examples/GALLERY_HEADER.rst says when the examples were not run: with
    # SKCUECO_DOCS_EXECUTE=0 or -D plot_gallery=0 (read here, after -D applies)
    if str(config.plot_gallery).lower() in ("0", "false"):
        app.tags.add("gallery_not_run")


def setup(app):
    """Hook the configuration's own steps into the build."""
    app.connect("config-inited", _tag_a_gallery_not_run)


def _write_cli_help():
    """Write the --help text of both programs, so the docs never drift from it."""
    from skcueco.cli import main as cli_main
    from skcueco.cli import train as cli_train

    out = HERE / "generated" / "cli"
    out.mkdir(parents=True, exist_ok=True)
    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal width
    for name, parser in [("skcueco", cli_main.build_parser("python -m skcueco")),
                         ("skcueco.train", cli_train.build_parser("python -m skcueco.train"))]:
        text = parser.format_help()
        path = out / f"{name}.txt"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")


_write_cli_help()

"""The built documentation reads offline: no page loads a script, a style
sheet or an image from the network, and the maths is rendered by a MathJax
copied into the site. A build that does not run the gallery says so on the
gallery's page."""

import html
import os
import re
import runpy
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs import _copy_for_build  # noqa: E402

# <script src=...>, <link href=...>, <img src=...>, <iframe src=...> that
# point at another host (http://, https:// or protocol-relative //)
EXTERNAL = re.compile(
    r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("sphinx", "numpydoc", "sphinx_gallery", "pydata_sphinx_theme",
                   "matplotlib", "sphinx-mathjax-offline"):
        pytest.importorskip(module, reason=f"building the docs needs {module}: "
                            'pip install -e ".[docs]"')
    tmp_path = tmp_path_factory.mktemp("offline")
    tree = _copy_for_build(tmp_path)
    out = tmp_path / "html"
    env = {**os.environ, "SKCUECO_DOCS_EXECUTE": "0", "MPLBACKEND": "Agg"}
    env.pop("SKCUECO_DOCS_INTERSPHINX", None)
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(tree / "docs"), str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return out


def test_no_page_loads_anything_from_the_network(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    external = {}
    for page in pages:
        found = EXTERNAL.findall(page.read_text(encoding="utf-8"))
        if found:
            external[str(page.relative_to(site))] = found
    assert not external, external


def test_the_maths_is_rendered_by_a_local_mathjax(site):
    method = (site / "method.html").read_text(encoding="utf-8")
    assert r"\(\tau\)" in method  # the maths is there, for MathJax to typeset
    scripts = re.findall(r"""<script\b[^>]*\bsrc\s*=\s*["']([^"']+)["']""", method)
    mathjax = [src for src in scripts if "mathjax" in src.lower()]
    assert mathjax == ["_static/mathjax/tex-chtml.js"]
    # the script and the fonts and components it loads next to itself
    assert (site / mathjax[0]).stat().st_size > 100_000
    assert list((site / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))


def test_a_gallery_built_without_running_says_so(site):
    index = (site / "auto_examples" / "index.html").read_text(encoding="utf-8")
    assert "built without running the examples" in index
    assert "thumbnails" in index and "placeholders" in index
    assert "come from running it when" not in index  # no promise of figures
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", index)).split())
    assert 'pip install -e ".[plot]"' in text  # as in the README


@pytest.mark.parametrize("plot_gallery, tagged", [
    ("True", False), ("False", True), ("0", True), ("1", False), (True, False), (False, True),
])
def test_the_gallery_header_knows_whether_the_examples_ran(tmp_path, plot_gallery, tagged):
    # docs/conf.py from a copy of the docs (it writes the --help pages next to itself)
    tree = _copy_for_build(tmp_path)
    conf = runpy.run_path(str(tree / "docs" / "conf.py"))
    added = set()
    app = types.SimpleNamespace(tags=types.SimpleNamespace(add=added.add))
    conf["_tag_a_gallery_not_run"](app, types.SimpleNamespace(plot_gallery=plot_gallery))
    assert added == ({"gallery_not_run"} if tagged else set())

"""The documentation: the HTML builds without warnings and without network,
the API pages list every public name, and every public docstring passes the
numpydoc checks chosen in setup.cfg.

The build renders the gallery without running the examples (they have their
own tests in test_examples.py). The full build, which runs them, is::

    python -m sphinx -W -b html docs docs/_build/html
"""

import configparser
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# the public modules, as on the API pages (docs/api/<module>.rst)
PUBLIC_MODULES = [
    "skcueco", "skcueco.augment", "skcueco.backbones", "skcueco.callbacks",
    "skcueco.datasets", "skcueco.evaluation", "skcueco.inspection", "skcueco.nn",
    "skcueco.recipes",
]


def _available(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def public_names(module_name):
    """``__all__``, or the public names the module defines itself."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return [name for name in module.__all__ if not name.startswith("__")]
    return sorted(
        name for name, obj in vars(module).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == module_name
        and (inspect.isclass(obj) or inspect.isfunction(obj))
    )


def public_objects():
    """Import paths of every public class, function and method, once each."""
    paths = {}
    for module_name in PUBLIC_MODULES:
        if not _available(module_name):
            continue
        module = importlib.import_module(module_name)
        for name in public_names(module_name):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # constants
            path = f"{module_name}.{name}"
            paths.setdefault(id(obj), path)
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if member.startswith("_") or re.fullmatch(r"set_\w+_request", member):
                        continue  # private; scikit-learn's metadata-routing setters
                    if isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    if inspect.isfunction(getattr(value, "fn", None)):
                        value = value.fn  # scikit-learn's available_if methods
                    if not (inspect.isfunction(value) or isinstance(value, property)):
                        continue
                    if value.__doc__ is None and _documented_in_a_base(obj, member):
                        continue  # an override shows its base's docstring, as in Sphinx
                    paths.setdefault(id(value), f"{path}.{member}")
    return sorted(paths.values())


def _documented_in_a_base(cls, name):
    return any(getattr(vars(base).get(name), "__doc__", None) for base in cls.__mro__[1:])


def validation_checks():
    """The numpydoc checks selected in setup.cfg's [tool:numpydoc_validation]."""
    from numpydoc.validate import get_validation_checks

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    checks = config.get("tool:numpydoc_validation", "checks")
    return get_validation_checks(set(checks.split(",")))


def test_api_pages_list_every_public_name():
    missing = []
    for module_name in PUBLIC_MODULES:
        page = DOCS / "api" / f"{module_name}.rst"
        assert page.is_file(), f"no API page for {module_name}"
        if not _available(module_name):
            continue
        listed = set(re.findall(r"^   (\w+)$", page.read_text(encoding="utf-8"), re.MULTILINE))
        missing += [f"{module_name}.{name}" for name in public_names(module_name)
                    if name not in listed]
    assert not missing, f"public names missing from docs/api/: {missing}"


def test_public_objects_are_found():
    paths = public_objects()
    for expected in ("skcueco.CueCoEmbedder.fit", "skcueco.CueCoClassifier.predict_proba",
                     "skcueco.ImageSource", "skcueco.callbacks.ProgressBar.on_batch_end",
                     "skcueco.recipes.recipe", "skcueco.augment.make_augmentation"):
        assert expected in paths
    assert not any(re.search(r"\.set_\w+_request$", path) for path in paths)


@pytest.mark.parametrize("path", public_objects())
def test_docstring(path):
    validate = pytest.importorskip("numpydoc.validate")
    checks = validation_checks()
    errors = [f"{code}: {message}" for code, message in validate.validate(path)["errors"]
              if code in checks]
    assert not errors, f"{path}:\n" + "\n".join(errors)


def _copy_for_build(tmp_path):
    """A tree that builds like the checkout but writes nothing into it.

    Sphinx-Gallery and autosummary write generated pages next to the
    sources, so the docs are copied and the package and examples linked.
    """
    tree = tmp_path / "tree"
    shutil.copytree(DOCS, tree / "docs",
                    ignore=shutil.ignore_patterns("_build", "auto_examples", "generated",
                                                  "sg_execution_times.rst"))
    for name in ("skcueco", "examples", "setup.cfg"):
        (tree / name).symlink_to(ROOT / name)
    return tree


def test_html_builds_without_warnings_or_network(tmp_path):
    for module in ("sphinx", "numpydoc", "sphinx_gallery", "pydata_sphinx_theme",
                   "matplotlib"):
        pytest.importorskip(module, reason=f"building the docs needs {module}: "
                            'pip install -e ".[docs]"')
    tree = _copy_for_build(tmp_path)
    out = tmp_path / "html"
    env = {**os.environ, "SKCUECO_DOCS_EXECUTE": "0", "MPLBACKEND": "Agg"}
    env.pop("SKCUECO_DOCS_INTERSPHINX", None)  # the only setting that uses the network
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(tree / "docs"), str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    # the entry points, the method page, an API page per name, and the gallery
    for page in ("index", "getting_started", "user_guide", "method", "api", "changelog",
                 "auto_examples/index", "generated/skcueco.CueCoEmbedder",
                 "generated/skcueco.callbacks.ProgressBar"):
        assert (out / f"{page}.html").is_file(), f"{page}.html was not built"
    examples = sorted(p.stem for p in (ROOT / "examples").glob("plot_*.py"))
    for name in examples:
        assert (out / "auto_examples" / f"{name}.html").is_file(), name
    method = (out / "method.html").read_text(encoding="utf-8")
    assert "cluster_warmup" in method and "math" in method
    embedder = (out / "generated" / "skcueco.CueCoEmbedder.html").read_text(encoding="utf-8")
    assert "set_fit_request" not in embedder
    for method_name in ("fit", "transform", "predict", "save", "load"):
        assert f"CueCoEmbedder.{method_name}" in embedder

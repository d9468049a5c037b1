"""The gallery examples: in Sphinx-Gallery format, and they run end to end, show
their figures, write nothing, raise no RuntimeWarning, and show what they claim.

Most examples train for tens of seconds; they are marked ``slow``
(``python -m pytest -m "not slow"`` leaves them out).
"""

import ast
import re
import runpy
import warnings
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))

# examples that run in a few seconds; every other one is marked slow
FAST = {"plot_tabular_vectors.py", "plot_image_folder.py", "plot_watch_training.py"}
# examples that must print probe accuracies in which CueCo beats raw pixels
PROBE_EXAMPLES = {"plot_digits_embedding.py"}

_ACCURACY = re.compile(r"^(CueCo|Raw pixels) probe accuracy: ([0-9.]+)$", re.MULTILINE)


def parse_probe_accuracies(out):
    """``{"CueCo": float, "Raw pixels": float}`` from an example's output."""
    return {name: float(value) for name, value in _ACCURACY.findall(out)}


def _params():
    for path in EXAMPLES:
        marks = [] if path.name in FAST else [pytest.mark.slow]
        yield pytest.param(path, marks=marks, id=path.name)


def test_listed_examples_exist():
    names = {path.name for path in EXAMPLES}
    assert FAST <= names
    assert PROBE_EXAMPLES <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_is_a_gallery_example(path):
    source = path.read_text(encoding="utf-8")
    assert path.name.startswith("plot_"), "the gallery runs plot_*.py files only"
    docstring = ast.get_docstring(ast.parse(source), clean=False)
    assert docstring, "an example starts with a docstring holding its title"
    lines = docstring.strip("\n").splitlines()
    assert set(lines[0]) == {"="} and set(lines[2]) == {"="}, "a title over- and underlined"
    assert len(lines[0]) >= len(lines[1].strip()) and len(lines[2]) >= len(lines[1].strip())
    assert source.count("\n# %%\n") >= 2, "text and code alternate in # %% cells"
    # figures are shown (Sphinx-Gallery collects them), never written
    assert "savefig" not in source and "matplotlib.use(" not in source
    assert "plt.show()" in source


@pytest.mark.parametrize("path", list(_params()))
def test_example_runs(path, tmp_path, monkeypatch, capsys):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []

    def show(*args, **kwargs):
        shown.append(len(plt.get_fignums()))
        plt.close("all")

    monkeypatch.setattr(plt, "show", show)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)  # anything written to the working directory lands here
    before = sorted(p.name for p in EXAMPLES_DIR.iterdir())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # e.g. a division by zero
            runpy.run_path(str(path), run_name="__main__")
    finally:
        plt.close("all")
    out = capsys.readouterr().out

    assert shown and all(n >= 1 for n in shown), f"plt.show() without figures: {shown}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the example wrote files"
    assert sorted(p.name for p in EXAMPLES_DIR.iterdir()) == before

    accuracies = parse_probe_accuracies(out)
    if path.name in PROBE_EXAMPLES:
        assert set(accuracies) == {"CueCo", "Raw pixels"}, out
    assert all(0.0 <= value <= 1.0 for value in accuracies.values()), accuracies
    if {"CueCo", "Raw pixels"} <= set(accuracies):
        assert accuracies["CueCo"] > accuracies["Raw pixels"], accuracies


def test_parse_probe_accuracies():
    out = ("noise\nCueCo probe accuracy: 0.9800\n"
           "Raw pixels probe accuracy: 0.9600\nAdjusted Rand index: 0.5\n")
    assert parse_probe_accuracies(out) == {"CueCo": 0.98, "Raw pixels": 0.96}

"""The gallery examples run end to end, write their figures and show what they claim."""

import re
import runpy
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))

# figures each example must write; an example not listed must write at least one
EXPECTED_FIGURES = {
    "plot_digits_embedding.py": ["digits_loss_curve.png", "digits_embedding_tsne.png"],
}
# examples that must print probe accuracies in which CueCo beats raw pixels
PROBE_EXAMPLES = {"plot_digits_embedding.py"}

_ACCURACY = re.compile(r"^(CueCo|Raw pixels) probe accuracy: ([0-9.]+)$", re.MULTILINE)


def test_listed_examples_exist():
    names = {path.name for path in EXAMPLES}
    assert set(EXPECTED_FIGURES) <= names
    assert PROBE_EXAMPLES <= names


def parse_probe_accuracies(out):
    """``{"CueCo": float, "Raw pixels": float}`` from an example's output."""
    return {name: float(value) for name, value in _ACCURACY.findall(out)}


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(path, tmp_path, monkeypatch, capsys):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SKCUECO_EXAMPLES_OUT", str(tmp_path))
    # anything an example writes without the variable lands here, not in the repo
    monkeypatch.chdir(tmp_path)
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        plt.close("all")
    out = capsys.readouterr().out

    written = sorted(p.name for p in tmp_path.glob("*.png"))
    expected = EXPECTED_FIGURES.get(path.name)
    if expected is None:
        assert written, f"{path.name} wrote no PNG file"
    for name in expected or written:
        figure = tmp_path / name
        assert figure.is_file(), f"{path.name} did not write {name}; wrote {written}"
        assert figure.stat().st_size > 0, f"{path.name} wrote an empty {name}"

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

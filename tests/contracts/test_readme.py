"""The README works as written: each Python example runs on its own, and the
commands and options it names exist.

The examples run with one training epoch (``max_epochs=N`` is replaced) to
stay fast; everything else runs as printed.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.rst"


def python_blocks(text):
    """Bodies of the ``.. code-block:: python`` directives, dedented."""
    blocks = []
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:[ ]{4}.*\n|\n)+)", text):
        lines = [line[4:] for line in match.group(1).splitlines()]
        blocks.append("\n".join(lines))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def run_block(block, tmp_path, monkeypatch, capsys):
    """Run one block in a fresh namespace and an empty directory; its output."""
    monkeypatch.chdir(tmp_path)
    code = re.sub(r"max_epochs=\d+", "max_epochs=1", block)
    exec(compile(code, "README.rst", "exec"), {"__name__": "__readme__"})
    return capsys.readouterr().out


def test_readme_has_the_examples_this_test_expects():
    assert len(BLOCKS) == 4
    assert "CueCoEmbedder(max_epochs=40" in BLOCKS[0]
    assert "GridSearchCV" in BLOCKS[1] and "FrozenEstimator" in BLOCKS[2]
    assert "image_size=64" in BLOCKS[3]


def test_quick_start(tmp_path, monkeypatch, capsys):
    out = run_block(BLOCKS[0], tmp_path, monkeypatch, capsys).splitlines()
    assert 0.0 <= float(out[0]) <= 1.0  # the probe's accuracy
    # the history is printed whole: every column, no "..." in its place
    header = out[1].split()
    assert header[:2] == ["epoch", "loss"] and "cluster_weight" in header
    assert not any("..." in line for line in out[1:])


def test_classifier_and_search(tmp_path, monkeypatch, capsys):
    out = run_block(BLOCKS[1], tmp_path, monkeypatch, capsys).splitlines()
    assert 0.0 <= float(out[0]) <= 1.0
    assert "'embedder__temperature'" in out[1] and "'head_lr'" in out[1]


def test_head_only_search(tmp_path, monkeypatch, capsys):
    out = run_block(BLOCKS[2], tmp_path, monkeypatch, capsys)
    assert out.startswith("{'head__C': ")


def test_images_on_disk(tmp_path, monkeypatch, capsys):
    out = run_block(BLOCKS[3], tmp_path, monkeypatch, capsys)
    assert out.strip() == "(1, 640)"


def test_readme_shows_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert "pip install -e . && python -m skcueco" in text
    assert 'pip install -e ".[test]" && python -m pytest' in text
    # they come first, before any other section
    assert text.index("pip install -e . && python -m skcueco") < text.index("\nInstall\n")
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" \
        in text


def test_options_named_in_the_readme_exist():
    from skcueco.cli.main import build_parser

    text = README.read_text(encoding="utf-8")
    # the paragraph on the main job, up to the next section
    paragraph = text[text.index("The main job fits"):text.index("\nInstall\n")]
    help_text = build_parser("skcueco").format_help()
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", paragraph)) - {"--help"}
    assert {"--data", "--labels", "--epochs", "--backbone", "--device", "--save"} <= named
    missing = sorted(option for option in named if option not in help_text)
    assert not missing, f"the README names options the main job does not have: {missing}"


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "sphinx", "--version"],
])
def test_docs_command_named_in_the_readme_exists(command):
    pytest.importorskip("sphinx", reason='building the docs needs pip install -e ".[docs]"')
    text = README.read_text(encoding="utf-8")
    assert "python -m sphinx -b html docs docs/_build/html" in text
    assert "SKCUECO_DOCS_EXECUTE=0" in text
    subprocess.run(command, check=True, capture_output=True)

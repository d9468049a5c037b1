"""The README's Python examples run (with one training epoch to stay fast)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.rst"


def python_blocks(text):
    """Bodies of the ``.. code-block:: python`` directives, dedented."""
    blocks = []
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:[ ]{4}.*\n|\n)+)", text):
        lines = [line[4:] for line in match.group(1).splitlines()]
        blocks.append("\n".join(lines))
    return blocks


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    namespace = {}
    for block in blocks:
        exec(compile(re.sub(r"max_epochs=\d+", "max_epochs=1", block), "README.rst", "exec"),
             namespace)
    # the quick start printed a probe accuracy, the searches found their best
    assert 0.0 <= float(capsys.readouterr().out.split()[0]) <= 1.0
    assert hasattr(namespace["search"], "best_params_")


def test_readme_shows_the_two_setup_commands():
    text = README.read_text()
    assert "pip install -e . && python -m skcueco" in text
    assert 'pip install -e ".[test]" && python -m pytest' in text

"""The benchmark results can be found from the documentation and back.

Every path under ``benchmarks/results/`` that the documentation (``docs/*.rst``
and ``README.rst``) or the index ``benchmarks/results/README.md`` names is a
file (or folder) that exists, named in full rather than by a glob; the index
lists every results file, and each of its rows names documentation sections
that exist and cite that run.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
INDEX = RESULTS / "README.md"
DOC_FILES = sorted((ROOT / "docs").glob("*.rst")) + [ROOT / "README.rst"]

# a path under benchmarks/results/ as the docs write it, up to a closing
# literal, quote, bracket, comma or space
CITED = re.compile(r"benchmarks/results/[^\s`'\"()<>,;]*")
GLOB = re.compile(r"[*?\[\]]")
# a documentation section as the index names it: docs/<page>.rst#<section id>
SECTION_REF = re.compile(r"docs/([\w-]+)\.rst#([a-z0-9-]+)")
# a markdown link target relative to the index
LINK = re.compile(r"\]\(([^)#\s]+)\)")
HEADING_CHARS = set("=-~^\"'`#*+.:_")


def cited_paths(text):
    """The paths under benchmarks/results/ that ``text`` names."""
    return [path.rstrip(".:") for path in CITED.findall(text)]


def citation_problems(text, root=ROOT):
    """What is wrong with the results paths ``text`` names: globs, missing files."""
    problems = []
    for path in cited_paths(text):
        if GLOB.search(path):
            problems.append(f"{path}: a glob; cite each file")
        elif not (root / path).exists():
            problems.append(f"{path}: no such file")
    return problems


def section_id(title):
    """The HTML id Sphinx gives a section with this title."""
    return re.sub(r"[^a-z0-9]+", "-", title.replace("``", "").lower()).strip("-")


def sections(path):
    """``{section id: text of the section}`` of an RST file, up to the next heading."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, current = {}, None
    for i, line in enumerate(lines):
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        is_heading = (
            line.strip() and not set(line.strip()) <= HEADING_CHARS
            and len(set(underline)) == 1 and set(underline) <= HEADING_CHARS
            and len(underline) >= len(line.rstrip())
        )
        if is_heading:
            current = section_id(line.strip())
            found[current] = ""
        elif current is not None:
            found[current] += line + "\n"
    return found


def index_rows():
    """``(results files of the row, documentation sections it names)`` per run."""
    rows = []
    for line in INDEX.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| ["):
            continue
        run_cell = line.split(" | ")[0]
        files = [(RESULTS / target).resolve() for target in LINK.findall(run_cell)]
        if files:  # the table of folders links to headings, not to files
            rows.append((files, SECTION_REF.findall(line)))
    return rows


def results_files():
    return {path.resolve() for path in RESULTS.rglob("*")
            if path.is_file() and path != INDEX}


@pytest.mark.parametrize("doc", DOC_FILES + [INDEX], ids=lambda p: p.name)
def test_cited_results_files_exist_and_are_named_in_full(doc):
    problems = citation_problems(doc.read_text(encoding="utf-8"))
    assert not problems, f"{doc.relative_to(ROOT)} cites: " + "; ".join(problems)


def test_citation_check_catches_globs_and_missing_files():
    text = ("tables in ``benchmarks/results/balance05/*.md`` and\n"
            "``benchmarks/results/balance05/no_such_run.md``; index in\n"
            "``benchmarks/results/README.md``.")
    problems = citation_problems(text)
    assert problems == [
        "benchmarks/results/balance05/*.md: a glob; cite each file",
        "benchmarks/results/balance05/no_such_run.md: no such file",
    ]


def test_section_ids_follow_sphinx():
    assert section_id("Groups of unequal size: ``cluster_balance``") \
        == "groups-of-unequal-size-cluster-balance"
    assert section_id("Timings measured on a 2-core CPU") == "timings-measured-on-a-2-core-cpu"


def test_index_lists_every_results_file_and_nothing_else():
    linked = {path for files, _ in index_rows() for path in files}
    assert linked, "the index lists no runs"
    missing = sorted(str(p.relative_to(RESULTS)) for p in results_files() - linked)
    stale = sorted(str(p) for p in linked - results_files())
    assert not missing, f"results files the index does not list: {missing}"
    assert not stale, f"the index lists files that do not exist: {stale}"


def test_each_indexed_run_names_a_docs_section_that_cites_it():
    pages = {}
    problems = []
    for files, refs in index_rows():
        run = files[0].relative_to(RESULTS).as_posix()
        if not refs:
            problems.append(f"{run}: no documentation section")
        for page, anchor in refs:
            page_path = ROOT / "docs" / f"{page}.rst"
            if page not in pages:
                pages[page] = sections(page_path) if page_path.exists() else {}
            text = pages[page].get(anchor)
            if text is None:
                problems.append(f"{run}: docs/{page}.rst has no section #{anchor}")
                continue
            cited = {(ROOT / path).resolve() for path in cited_paths(text)}
            if not cited & set(files):
                problems.append(f"{run}: docs/{page}.rst#{anchor} does not cite it")
    assert not problems, "\n".join(problems)

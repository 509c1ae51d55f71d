"""BENCHMARKS.md quotes stored results only: every table sits in a section that names its result
file under benchmarks/results/, and every file it names is there."""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NAMED = re.compile(r"benchmarks/results/([\w.<>*-]+\.(?:json|png|md))")


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every ## and ### section."""
    parts = re.split(r"(?m)^(#{2,3} .*)$", text)
    return [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def matches(name: str) -> list[Path]:
    """The result files a name stands for (`label_errors_<dataset>_seed<k>.json` is a pattern)."""
    return sorted(RESULTS.glob(re.sub(r"<[^>]+>", "*", name)))


def test_every_result_file_named_in_benchmarks_md_is_stored():
    named = set(NAMED.findall((REPO / "BENCHMARKS.md").read_text()))
    assert named, "BENCHMARKS.md names no result file"
    missing = sorted(n for n in named if not matches(n))
    assert not missing, f"BENCHMARKS.md cites result files that are not in benchmarks/results/: {missing}"


def test_every_table_in_benchmarks_md_names_its_result_file():
    bare = []
    for heading, body in sections((REPO / "BENCHMARKS.md").read_text()):
        if re.search(r"(?m)^\|", body) and not NAMED.search(body):
            bare.append(heading)
    assert not bare, f"sections with a table but no result file under benchmarks/results/: {bare}"


def test_every_stored_json_result_reads():
    broken = []
    for path in sorted(RESULTS.glob("*.json")):
        try:
            json.loads(path.read_text())
        except ValueError as e:
            broken.append(f"{path.name}: {e}")
    assert not broken, f"result files that are not whole JSON: {broken}"

"""Check that docs/comparison.md still matches what pidsafe does.

The page records a table measured by bench/compare_libraries.py. The other
libraries are not installed for the tests, but pidsafe is, so its column is
measured again here: a change in pidsafe's behaviour on a hostile input
fails this test until the script is rerun and the page updated.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "compare_libraries.py"
PAGE = ROOT / "docs" / "comparison.md"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_libraries", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _recorded_column(title: str) -> dict[str, str]:
    """Return the page's cells in column `title`, keyed by input label."""
    lines = [line for line in PAGE.read_text().splitlines() if line.startswith("|")]
    header = _split_row(lines[0])
    column = header.index(title)
    return {cells[0]: cells[column] for cells in map(_split_row, lines[2:])}


@pytest.mark.needs_linux
@pytest.mark.needs_procfs
def test_pidsafe_column_matches_page() -> None:
    script = _load_script()
    [pidsafe] = [c for c in script.CONTENDERS if c.key == "pidsafe"]
    options = script.parse_arguments([])

    rows = script.run_table([pidsafe], options)

    measured = {label: cell for label, cell in rows}
    recorded = _recorded_column("pidsafe")
    assert measured.keys() == recorded.keys()
    for label, cell in measured.items():
        assert cell == recorded[label], label

"""Markdown table primitives shared by the report (report.py) and the
cross-workload tables (overview.py): tables, footnotes, and what a cell
without numbers shows."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

NOISY_NOTE = ("measured while other processes kept the CPUs busy (no quiet run for every "
              "implementation here): the median of all runs, noisy ones included; "
              "rerun on a quiet machine")


def table(header: List[str], rows: List[List[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Notes:
    """Numbered footnotes for failures, collected while a table is built."""

    def __init__(self) -> None:
        self.items: List[str] = []

    def add(self, text: str) -> str:
        """The marker of ``text`` (the same text gets the same number)."""
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"

    def render(self) -> str:
        """The notes as a list ("" when none)."""
        return "\n".join(f"{i}. {text}" for i, text in enumerate(self.items, 1))


EXPECTED = "expected: select() cannot watch fds >= FD_SETSIZE (1024)"
BRIEF_ERROR = 200  # characters of an error message in a brief note


def failure_text(cell: Dict[str, Any], point_label: str, brief: bool = False) -> str:
    """One footnote for a failed or skipped cell (``brief``: the gist only)."""
    if cell["status"] == "skipped":
        return f"{cell['impl']}: skipped: {cell['error']}"
    if brief and cell["expected_failure"]:
        return f"{cell['impl']} @ {point_label}: failed as {EXPECTED}"
    kind = EXPECTED if cell["expected_failure"] else "UNEXPECTED"
    error = cell["error"][:BRIEF_ERROR] + "..." if brief else cell["error"]
    return f"{cell['impl']} @ {point_label}: failed ({kind}): {error}"


def status_cell(cell: Optional[Dict[str, Any]], point_label: str, notes: Notes,
                brief: bool = False) -> str:
    """What a table shows for a cell without numbers ("" when it has them)."""
    if cell is None:
        return "—"
    if cell["status"] == "skipped":
        return "skipped " + notes.add(failure_text(cell, point_label, brief))
    if cell["status"] == "failed":
        word = "failed" if cell["expected_failure"] else "**FAILED**"
        return word + " " + notes.add(failure_text(cell, point_label, brief))
    return ""

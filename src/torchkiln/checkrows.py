"""A check's verdict as one row of a table (ok / warn / error, with the fix), and the table.

Doctor's rows and the build's preflight are made of these; each check is a pure function of
gathered facts that returns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the doctor's table."""

    check: str
    status: str  # ok | warn | error
    detail: str
    fix: str = ""


def failed(rows: list[Row]) -> bool:
    """Tell whether any row is an error."""
    return any(row.status == "error" for row in rows)


def render(rows: list[Row]) -> str:
    """Lay the rows out as a plain-text table with a fix under each failure; any URL password
    a row names (an index, a proxy) shows as ****."""
    from torchkiln.urls import mask_text

    width = max(len(row.check) for row in rows)
    lines = []
    for row in rows:
        mark = {"ok": "ok   ", "warn": "WARN ", "error": "ERROR"}[row.status]
        lines.append(f"{row.check:<{width}}  {mark}  {mask_text(row.detail)}")
        if row.fix and row.status != "ok":
            lines.append(f"{'':<{width}}         fix: {mask_text(row.fix)}")
    return "\n".join(lines)


def append_to_env(lines: Sequence[str]) -> str:
    """A command that adds settings to .env, to type as printed (a later line wins)."""
    return "printf '\\n" + "\\n".join(lines) + "\\n' >> .env"

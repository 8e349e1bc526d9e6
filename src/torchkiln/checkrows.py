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


# How fundamental each check is: a refused build lists first what blocks the others (no base
# image, no build at all) and last what a setting or a cheaper route fixes (the disk).
ORDER = (
    "engine",
    "compose",
    "buildx",
    ".env",
    "base images",
    "tls",
    "index",
    "python",
    "cuda",
    "nvidia runtime",
    "driver",
    "cca",
    "extensions",
    "disk",
)


def fundamental_first(rows: Sequence[Row]) -> list[Row]:
    """The rows in the order of ORDER (a check's name up to its first ' (' counts), the
    others last, each group as given."""

    def rank(row: Row) -> int:
        name = row.check.split(" (", 1)[0]
        return ORDER.index(name) if name in ORDER else len(ORDER)

    return sorted(rows, key=rank)


def refusal(rows: Sequence[Row]) -> str:
    """Refuse a build for every blocking row at once, the most fundamental first, each with its
    fix; a single row is one line."""
    lines = [
        f"{row.check}: {row.detail}; fix: {row.fix}" if row.fix else f"{row.check}: {row.detail}"
        for row in fundamental_first(rows)
    ]
    if len(lines) == 1:
        return lines[0]
    return (
        f"the build cannot start here, for {len(lines)} reasons (the first blocks the others):\n"
        + "\n".join(f"  {number}. {line}" for number, line in enumerate(lines, 1))
    )


def append_to_env(lines: Sequence[str]) -> str:
    """A command that adds settings to .env, to type as printed (a later line wins)."""
    return "printf '\\n" + "\\n".join(lines) + "\\n' >> .env"

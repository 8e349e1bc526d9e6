"""Results of the in-image checks: statuses, one row per check, the runner that turns a check's
outcome into a row, and the table/JSON renderings. Standard library only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIP, WARN = "pass", "fail", "skip", "warn"


class CheckFailed(Exception):
    """A check's own verdict of failure; its message is the reason shown."""


class CheckSkipped(Exception):
    """A check that cannot run here; its message is the reason shown."""


class CheckWarned(Exception):
    """A check that ran but whose result deserves attention without failing the run."""


@dataclass
class Check:
    """One row of the report."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0
    required: bool = True


@dataclass
class Report:
    """Everything smoke found, ready for the table or JSON."""

    checks: list[Check] = field(default_factory=list)
    torch: str | None = None
    cuda: str | None = None
    driver: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)  # the arch audit's package rows
    links: list[dict[str, Any]] = field(default_factory=list)  # the link audit's package rows
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Tell whether no required check failed (skips and warnings do not fail a run)."""
        return all(c.status != FAIL for c in self.checks if c.required)


def one_line(text: str, limit: int = 400) -> str:
    """Collapse whitespace so a reason fits in one table cell."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def outcome(func: Callable[[], str]) -> tuple[str, str]:
    """Run a check and map its result to (status, detail): a returned string passes, the Check*
    exceptions skip, warn or fail, and any other exception fails with its type and message."""
    try:
        return PASS, func()
    except CheckSkipped as exc:
        return SKIP, str(exc)
    except CheckWarned as exc:
        return WARN, str(exc)
    except CheckFailed as exc:
        return FAIL, str(exc)
    except Exception as exc:  # any failure inside a check is a result, never a traceback
        return FAIL, f"{type(exc).__name__}: {exc}"


RAISED = {FAIL: CheckFailed, SKIP: CheckSkipped, WARN: CheckWarned}


class InThread:
    """A check begun in a thread before its row is due (its slow first call overlaps the rows
    before it); `result` gives its row the outcome it would have had in line."""

    def __init__(self, func: Callable[[], str]) -> None:
        self._outcome: tuple[str, str] = (FAIL, "the check's thread ended without an outcome")
        self._thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self._thread.start()

    def _run(self, func: Callable[[], str]) -> None:
        self._outcome = outcome(func)

    def result(self) -> str:
        self._thread.join()
        status, detail = self._outcome
        if status == PASS:
            return detail
        raise RAISED[status](detail)


class Runner:
    """Collects check results, timing each and turning exceptions into failing rows."""

    def __init__(self) -> None:
        self.report = Report()

    def add(self, name: str, status: str, detail: str, required: bool = True) -> None:
        """Record a row without running anything."""
        self.report.checks.append(Check(name, status, one_line(detail), 0.0, required))

    def run(self, name: str, func: Callable[[], str], required: bool = True) -> Check:
        """Run one check and record its row."""
        start = time.perf_counter()
        status, detail = outcome(func)
        seconds = round(time.perf_counter() - start, 4)
        check = Check(name, status, one_line(detail), seconds, required)
        self.report.checks.append(check)
        return check


def render_table(report: Report) -> str:
    """Lay the checks out as a plain-text table with a header and a verdict line."""
    rows = [("check", "status", "detail")] + [
        (c.name, c.status if c.required or c.status != FAIL else "fail*", c.detail)
        for c in report.checks
    ]
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    lines = []
    gpus = ", ".join(f"{d['name']} ({d['capability']})" for d in report.devices) or "no GPU"
    lines.append(
        f"torch {report.torch or '-'}  CUDA {report.cuda or '-'}  driver {report.driver or '-'}"
        f"  {gpus}"
    )
    for i, (name, status, detail) in enumerate(rows):
        lines.append(f"{name:<{width0}}  {status:<{width1}}  {detail}")
        if i == 0:
            lines.append(f"{'-' * width0}  {'-' * width1}  {'-' * 6}")
    failed = [c.name for c in report.checks if c.required and c.status == FAIL]
    verdict = "OK" if report.ok else "FAILED: " + ", ".join(failed)
    if any(c.status == FAIL and not c.required for c in report.checks):
        verdict += "  (fail*: informational check, does not fail the run)"
    lines.append(f"{verdict}  ({report.seconds:.1f} s)")
    return "\n".join(lines)


def report_json(report: Report) -> str:
    """Serialise the report as the JSON object documented in the module's help."""
    return json.dumps(
        {
            "ok": report.ok,
            "checks": [asdict(c) for c in report.checks],
            "torch": report.torch,
            "cuda": report.cuda,
            "driver": report.driver,
            "devices": report.devices,
            "audit": report.audit,
            "links": report.links,
            "seconds": round(report.seconds, 3),
        },
        indent=2,
    )

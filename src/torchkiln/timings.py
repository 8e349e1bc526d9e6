"""What a finished build records for later estimates (`.torchkiln/timings.json`): the build's
total for its mode and each compile stage that ran, with its seconds, jobs and sccache counts."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchkiln import buildlog, compose, envfile, settings

COMPILE_STAGES = ("magma-build", "torch-build", "vision-build", "audio-build", "extensions-build")


# The compile steps built against torch: they run at once (jobshare).
AGAINST_TORCH = ("vision-build", "audio-build", "extensions-build")


TIMINGS_FILE = "timings.json"


# Kept per checkout: enough to learn from, small enough to read in no time.
TIMINGS_KEPT = 50


def extensions_key(values: Mapping[str, str], folders: int = 0) -> str:
    """The extensions a build compiled, as recorded: its specs and how many local folders."""
    specs = " ".join(sorted(values.get("EXTENSIONS", "").split()))
    return f"{specs}; {folders} local folders"


_STEP_STAT = re.compile(
    r"^#(\d+) [\d.]+ torchkiln-(sccache|jobs): .*?(?:\bhits=(\d+) misses=(\d+)|MAX_JOBS=(\d+))",
    re.MULTILINE,
)


def timing_entries(
    values: Mapping[str, str], log: str, seconds: float, date: str, folders: int = 0
) -> list[dict[str, object]]:
    """What a finished build teaches later estimates: each compile stage that ran (not from
    cache) with its seconds, jobs and sccache counts, and the build's total for its mode with
    the extensions it compiled (`folders`: local extension folders)."""
    stages = {number: stage for number, _, stage, _ in buildlog.STEP_HEADER.findall(log)}
    per_step: dict[str, dict[str, int]] = {}
    for number, kind, hits, misses, jobs in _STEP_STAT.findall(log):
        stat = per_step.setdefault(number, {"hits": 0, "misses": 0, "jobs": 0})
        if kind == "sccache":
            stat["hits"] += int(hits)
            stat["misses"] += int(misses)
        else:
            stat["jobs"] = max(stat["jobs"], int(jobs))
    cuda = settings.compiles_cuda(values)
    common = {"date": date, "mode": values["BUILD_MODE"], "cuda": cuda, "cca": values["CCA"]}
    entries: list[dict[str, object]] = [
        {"stage": "build", "seconds": round(seconds), **common,
         "extensions": extensions_key(values, folders)},
    ]  # fmt: skip
    for number, spent in buildlog.STEP_DONE.findall(log):
        stage = stages.get(number)
        if stage in COMPILE_STAGES:
            stat = per_step.get(number, {})
            entries.append({"stage": stage, "seconds": round(float(spent)), **common, **stat})
    return entries


def read_timings(root: Path) -> list[dict[str, object]]:
    """The timings this checkout's builds recorded ([] when none, or unreadable)."""
    try:
        recorded = json.loads((root / compose.STATE_DIR / TIMINGS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(recorded, list):
        return []
    return [entry for entry in recorded if isinstance(entry, dict)]


def record_timings(root: Path, entries: list[dict[str, object]]) -> None:
    """Add a build's timings to the record later estimates read."""
    kept = [*read_timings(root), *entries][-TIMINGS_KEPT:]
    # A convenience for later estimates: a checkout that cannot be written loses only that.
    with contextlib.suppress(OSError):
        file = root / compose.STATE_DIR / TIMINGS_FILE
        envfile.write_atomic(file, json.dumps(kept, indent=1) + "\n", 0o644)


def number(entry: Mapping[str, object], key: str) -> float:
    """A number of a recorded entry; 0 where the file (hand-edited, older) holds none."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class ColdCompile:
    """This machine's last cold torch compile of a kind (mostly sccache misses), and what the
    build it was part of recorded."""

    seconds: float
    jobs: int  # 0: not recorded
    cca: str
    date: str
    total: float | None  # that build's seconds (None: its total is no longer kept)
    stages: dict[str, float]  # its other compile stages that ran (not from the cache)
    extensions: str | None  # what it compiled (extensions_key; None: not recorded)


def last_cold_compile(history: Sequence[Mapping[str, object]], cuda: bool) -> ColdCompile | None:
    """The last cold torch compile with CUDA (or without), or None."""
    for index in range(len(history) - 1, -1, -1):
        entry = history[index]
        if entry.get("stage") != "torch-build" or (entry.get("cuda") is True) != cuda:
            continue
        if number(entry, "hits") > number(entry, "misses"):
            continue  # a rebuild from sccache says nothing about a first compile
        # A build's entries are recorded together, its total first.
        start = next((n for n in range(index, -1, -1) if history[n].get("stage") == "build"), -1)
        end = next(
            (n for n in range(index + 1, len(history)) if history[n].get("stage") == "build"),
            len(history),
        )
        total = history[start] if start >= 0 else {}
        siblings = history[start + 1 : end]
        extensions = total.get("extensions")
        return ColdCompile(
            seconds=number(entry, "seconds"),
            jobs=int(number(entry, "jobs")),
            cca=str(entry.get("cca") or ""),
            date=str(entry.get("date") or "?"),
            total=number(total, "seconds") if total else None,
            stages={
                str(stage["stage"]): number(stage, "seconds")
                for stage in siblings
                if stage.get("stage") in AGAINST_TORCH
            },
            extensions=extensions if isinstance(extensions, str) else None,
        )
    return None

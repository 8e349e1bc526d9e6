"""What a finished build records for later estimates (`.torchkiln/timings.json`): the build's
total for its mode and each compile stage that ran, with its seconds, jobs and sccache counts."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchkiln import buildlog, compose, envfile

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
    cuda = values["CUDA_FROM"] != "none" and bool(values["CCA"])
    common = {"date": date, "mode": values["BUILD_MODE"], "cuda": cuda, "cca": values["CCA"]}
    total = {"stage": "build", "seconds": round(seconds), **common}
    entries: list[dict[str, object]] = [{**total, "extensions": extensions_key(values, folders)}]
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


def build_of(
    history: Sequence[Mapping[str, object]], index: int
) -> tuple[Mapping[str, object], list[Mapping[str, object]]] | None:
    """The build the entry at `index` belongs to (a build's entries are recorded together, its
    total first): (its total, its stage entries); None when its total is no longer kept."""
    start = next((n for n in range(index, -1, -1) if history[n].get("stage") == "build"), None)
    if start is None:
        return None
    end = next(
        (n for n in range(start + 1, len(history)) if history[n].get("stage") == "build"),
        len(history),
    )
    return history[start], list(history[start + 1 : end])

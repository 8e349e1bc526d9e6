"""BuildKit's plain progress log, read: which steps ran (not from the cache), and their seconds.

`invoke build` keeps the whole output (`.torchkiln/build-<service>.log`); the summary, the
estimate's learned timings and `invoke wheels` read it through these.
"""

from __future__ import annotations

import re

STEP_HEADER = re.compile(r"^#(\d+) (\[(?:\S+ )?([a-z0-9_.-]+) +\d+/\d+\] (\w+).*)$", re.MULTILINE)


STEP_CACHED = re.compile(r"^#(\d+) CACHED$", re.MULTILINE)


STEP_DONE = re.compile(r"^#(\d+) DONE ([\d.]+)s$", re.MULTILINE)


def executed_steps(log: str) -> list[tuple[str, str]]:
    """List the (stage, instruction) steps BuildKit ran, not took from cache, in a plain log.

    With an imported cache BuildKit may show one step as two vertices, one of them CACHED
    and the other only DONE; a step any of whose vertices was CACHED came from the cache.
    """
    cached = set(STEP_CACHED.findall(log))
    headers = STEP_HEADER.findall(log)
    cached_steps = {text for number, text, _, _ in headers if number in cached}
    executed: dict[str, tuple[str, str]] = {}
    for number, text, stage, verb in headers:
        if number not in cached and text not in cached_steps and verb != "FROM":
            executed.setdefault(number, (stage, verb))
    return list(executed.values())


def stage_seconds(log: str) -> list[tuple[str, float]]:
    """Sum the seconds BuildKit spent on the steps of each stage it ran, longest first."""
    stages = {number: stage for number, _, stage, _ in STEP_HEADER.findall(log)}
    totals: dict[str, float] = {}
    for number, seconds in STEP_DONE.findall(log):
        if number in stages:
            totals[stages[number]] = totals.get(stages[number], 0.0) + float(seconds)
    return sorted(totals.items(), key=lambda item: -item[1])

#!/usr/bin/env python3
"""Print the build speed figures of the train service on this machine.

- size of the build context sent to the engine (target: <= 1 MB),
- the no-op rebuild time with a warm cache (target: <= 15 s on the CI machine),
- the build-stage steps a train-only change re-runs (target: 0).

It works in a temporary copy of the repository with the CI settings (local/debian:bookworm,
Python 3.11, the fixture sources, the host CA bundle) and removes what it made, except the cache.
Usage: python3 scripts/measure_build.py
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "integration")]

import projects as images  # noqa: E402

from torchkiln.buildlog import executed_steps  # noqa: E402


def context_bytes(log: str) -> float:
    """Sum what the build sent as its main context ('transferring context' lines)."""
    sizes = re.findall(r"transferring context: ([\d.]+)([kMG]?B)", log)
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    return max((float(value) * scale[unit] for value, unit in sizes), default=0.0)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="torchkiln-measure-"))
    project = images.make_project(work, "measure")
    args = ("build", "--no-up", "--cca", "8.6 9.0", *images.fixture_sources(project))
    try:
        warm = images.assert_ok(project.invoke(*args))
        started = time.monotonic()
        again = images.assert_ok(project.invoke(*args))
        noop_seconds = time.monotonic() - started
        requirements = project.root / "docker" / "requirements.txt"
        requirements.write_text(requirements.read_text() + "# a train-only change\n")
        changed = images.assert_ok(project.invoke(*args))
    finally:
        images.remove_project(project)
        shutil.rmtree(work, ignore_errors=True)
    rerun = [step for step in executed_steps(changed) if step[0] in images.BUILD_STAGES]
    print(f"build context sent to the engine: {context_bytes(warm) / 1e6:.3f} MB (target <= 1 MB)")
    print(f"no-op rebuild of train (warm cache): {noop_seconds:.1f} s (target <= 15 s)")
    print(f"steps re-run by the no-op rebuild: {len(executed_steps(again))}")
    print(f"build-stage steps re-run after a train-only change: {len(rerun)} (target 0)")
    print(f"  steps that did re-run: {executed_steps(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

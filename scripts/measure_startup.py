#!/usr/bin/env python3
"""Print how long `invoke --list` and `invoke env` take (median of several runs)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "torchkiln"
        copy.mkdir()
        shutil.copy2(ROOT / "tasks.py", copy)
        shutil.copytree(ROOT / "src", copy / "src")
        invoke = [sys.executable, "-m", "invoke"]
        listing = [timed([*invoke, "--list"], copy) for _ in range(RUNS)]
        env = []
        for _ in range(RUNS):
            (copy / ".env").unlink(missing_ok=True)
            env.append(timed([*invoke, "env", "--cca", "8.6"], copy))
    print(f"{'command':<16} {'median s':>9} {'max s':>7} {'goal s':>7}")
    for name, times, goal in (("invoke --list", listing, 1.0), ("invoke env", env, 2.0)):
        print(f"{name:<16} {statistics.median(times):>9.3f} {max(times):>7.3f} {goal:>7.1f}")


if __name__ == "__main__":
    main()

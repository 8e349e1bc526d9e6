#!/usr/bin/env python3
"""Print how long the link audit of a whole site-packages takes, cold and warm (goal: 2 s).

Run it with the interpreter whose site-packages to audit, e.g. a venv with the official CUDA
torch and its NVIDIA wheels: `/path/to/venv/bin/python scripts/measure_link_audit.py [PATH]`.
Cold: the pages of every file under the audited folders are dropped from the page cache first
(posix_fadvise DONTNEED, file by file), and the audit runs in a fresh process; where the kernel
lets this user drop its whole cache (root on a machine of its own: /proc/sys/vm/drop_caches),
folders and inodes are dropped too, as after a reboot. Warm: the same command again, then the
median of further runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_RUNS = 5
GOAL_S = 2.0


def evict(folders: list[str]) -> int:
    """Drop the cached pages of every regular file under the folders; count the files."""
    count = 0
    for folder in [*folders, "/etc/ld.so.cache"]:
        paths = [folder] if os.path.isfile(folder) else []
        for parent, _, names in os.walk(folder):
            paths += [os.path.join(parent, name) for name in names]
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                count += 1
            finally:
                os.close(fd)
    return count


def drop_all_caches() -> bool:
    """Drop the page, folder and inode caches (root only); tell whether it could."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as handle:
            handle.write("3\n")
    except OSError:
        return False
    return True


def run(paths: list[str]) -> tuple[float, dict]:
    """Run the audit in a fresh process; its wall time and its JSON."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-m", "torchkiln.inimage.links", "--json", *paths]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"measure_link_audit: the audit exited {done.returncode}: {done.stderr.strip()}")
    return wall, json.loads(done.stdout)


def main() -> None:
    paths = sys.argv[1:]
    folders = paths or [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    evicted = evict(sorted(set(folders)))
    dropped = drop_all_caches()
    cold_wall, cold = run(paths)
    warm = [run(paths) for _ in range(WARM_RUNS)]
    warm_wall = statistics.median(wall for wall, _ in warm)
    warm_audit = statistics.median(data["seconds"] for _, data in warm)
    verdict = "ok" if cold["ok"] else "FAILED"
    print(f"site-packages: {', '.join(sorted(set(folders)))}")
    print(f"files: {cold['files']}  libraries needed: {cold['libraries']}  audit: {verdict}")
    print(f"{'run':<6} {'process s':>10} {'audit s':>8} {'goal s':>7}")
    print(
        f"{'cold':<6} {cold_wall:>10.2f} {cold['seconds']:>8.2f} {GOAL_S:>7.1f}"
        f"  (page cache of {evicted} files dropped first"
        f"{'; folder and inode caches too' if dropped else ''})"
    )
    print(
        f"{'warm':<6} {warm_wall:>10.2f} {warm_audit:>8.2f} {GOAL_S:>7.1f}  (median of {WARM_RUNS})"
    )


if __name__ == "__main__":
    main()

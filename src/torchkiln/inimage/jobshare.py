"""One MAX_JOBS budget shared by the compile steps that really run at once (stdlib only).

BuildKit runs the steps built against torch (vision, audio, extensions) at the same time, and
serves some of them from its cache: a step cannot know from its build args which siblings run.
So each running step says so in a folder every step mounts (a BuildKit cache mount, `sharing=
shared`): build-wheel.sh creates a marker file there and holds an flock on it while it compiles;
a marker whose lock nobody holds was left by a step that is gone, and is removed. After a short
wait for siblings that start with it, a step claims its jobs under the folder's own lock:

- an equal share of the budget with every live step that has claimed nothing yet, and
- never more than what live steps' claims leave of the budget (at least 1 job),

written into its marker for the steps that come later. A step alone gets the whole budget; two
that start together get half each; one that starts while another holds the whole budget gets 1
job, so the machine is never asked for more than the budget plus one.

Usage: python -m torchkiln.inimage.jobshare claim DIR MARKER BUDGET  -> prints "JOBS LIVE"
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

LOCK_NAME = ".lock"
MARKER_SUFFIX = ".step"


def holder_alive(marker: Path) -> bool:
    """Whether a process holds the marker's lock (a step still compiling)."""
    try:
        descriptor = os.open(marker, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return False
    finally:
        os.close(descriptor)


def read_claim(marker: Path) -> int:
    """The jobs a marker claims (0: none yet)."""
    try:
        text = marker.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def share(budget: int, claimed: int, unclaimed: int) -> int:
    """The jobs of a step that claims now: `claimed` is what live steps hold, `unclaimed` the
    live steps (this one included) that have claimed nothing yet."""
    equal = budget // max(1, unclaimed)
    return max(1, min(equal, budget - claimed))


def claim(folder: Path, marker: Path, budget: int) -> tuple[int, int]:
    """Claim this step's jobs; returns (jobs, live steps including this one). Stale markers (no
    lock held) are removed on the way."""
    with open(folder / LOCK_NAME, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        claimed = unclaimed = live = 0
        for other in sorted(folder.glob(f"*{MARKER_SUFFIX}")):
            if other != marker and not holder_alive(other):
                other.unlink(missing_ok=True)
                continue
            live += 1
            taken = 0 if other == marker else read_claim(other)
            claimed += taken
            unclaimed += taken == 0
        jobs = share(budget, claimed, unclaimed)
        marker.write_text(f"{jobs}\n")
        return jobs, max(1, live)


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "claim" or not argv[3].isdigit():
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    jobs, live = claim(Path(argv[1]), Path(argv[2]), max(1, int(argv[3])))
    print(jobs, live)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

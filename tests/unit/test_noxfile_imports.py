"""Loading the noxfile (every nox call: lint, tests, the list) imports only what every session
needs; the multi-node check's modules are imported by the smoke session itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_noxfile_loads_without_the_multinode_modules():
    probe = (
        "import runpy, sys; runpy.run_path('noxfile.py'); "
        "print(sorted(m for m in sys.modules if 'multinode' in m or 'multirank' in m))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

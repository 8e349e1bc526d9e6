"""The job budget shared at run time by the compile steps that run at once: real processes hold
the markers' locks as build-wheel.sh does (bash opens the marker, flock(1) locks it, and the step's
processes inherit it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from torchkiln.inimage import jobshare

pytestmark = pytest.mark.skipif(shutil.which("flock") is None, reason="no flock(1)")


@contextmanager
def running_step(folder: Path, name: str, claimed: int = 0) -> Iterator[Path]:
    """A sibling step: its marker, with its claim, locked by a live process as build-wheel.sh
    locks its own."""
    marker = folder / f"{name}{jobshare.MARKER_SUFFIX}"
    marker.write_text(f"{claimed}\n" if claimed else "")
    script = 'exec {fd}>>"$1"; flock "$fd"; exec sleep 60'
    holder = subprocess.Popen(["bash", "-c", script, "step", str(marker)])
    try:
        deadline = time.monotonic() + 10
        while not jobshare.holder_alive(marker):
            assert time.monotonic() < deadline, "flock(1) took no lock"
            time.sleep(0.05)
        yield marker
    finally:
        holder.kill()
        holder.wait()


def mine(folder: Path) -> Path:
    marker = folder / f"me{jobshare.MARKER_SUFFIX}"
    marker.touch()
    return marker


def test_a_step_alone_gets_the_whole_budget(tmp_path: Path) -> None:
    assert jobshare.claim(tmp_path, mine(tmp_path), 8) == (8, 1)
    assert (tmp_path / f"me{jobshare.MARKER_SUFFIX}").read_text() == "8\n"


def test_steps_that_start_together_split_the_budget(tmp_path: Path) -> None:
    with running_step(tmp_path, "vision"):
        assert jobshare.claim(tmp_path, mine(tmp_path), 8) == (4, 2)
    # The sibling claims after this one: what is left.
    with running_step(tmp_path, "first", claimed=4):
        other = tmp_path / f"second{jobshare.MARKER_SUFFIX}"
        other.touch()
        assert jobshare.claim(tmp_path, other, 8) == (4, 2)


def test_a_late_step_takes_what_is_left_and_never_less_than_one_job(tmp_path: Path) -> None:
    with running_step(tmp_path, "a", claimed=6):
        assert jobshare.claim(tmp_path, mine(tmp_path), 8) == (2, 2)
    (tmp_path / f"me{jobshare.MARKER_SUFFIX}").unlink()
    with running_step(tmp_path, "b", claimed=8):
        assert jobshare.claim(tmp_path, mine(tmp_path), 8) == (1, 2)


def test_a_marker_whose_step_is_gone_is_removed_and_takes_nothing(tmp_path: Path) -> None:
    stale = tmp_path / f"killed{jobshare.MARKER_SUFFIX}"
    stale.write_text("8\n")  # a step killed mid-compile left it; nobody holds its lock
    with running_step(tmp_path, "live", claimed=2):
        assert jobshare.claim(tmp_path, mine(tmp_path), 8) == (6, 2)
    assert not stale.exists()


def test_three_at_once_never_exceed_the_budget(tmp_path: Path) -> None:
    with running_step(tmp_path, "a"), running_step(tmp_path, "b"):
        first = jobshare.claim(tmp_path, mine(tmp_path), 4)[0]
    assert first == 1  # 4 // 3
    assert [jobshare.share(4, claimed, left) for claimed, left in ((0, 3), (1, 2), (3, 1))] == [
        1,
        2,
        1,
    ]


def test_the_command_line_prints_jobs_and_steps(tmp_path: Path) -> None:
    marker = mine(tmp_path)
    command = [sys.executable, "-m", "torchkiln.inimage.jobshare", "claim"]
    done = subprocess.run(
        [*command, str(tmp_path), str(marker), "6"], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (0, "6 1\n"), done.stderr
    bad = subprocess.run(
        [*command, str(tmp_path), str(marker), "x"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Usage:" in bad.stderr


REPO = Path(__file__).resolve().parents[2]


BACKEND = """
import pathlib, zipfile

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name, version = pathlib.Path(__file__).parent.name, "0.1"
    wheel = pathlib.Path(wheel_directory) / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        metadata = f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n"
        archive.writestr(f"{info}/METADATA", metadata)
        tags = "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
        archive.writestr(f"{info}/WHEEL", tags)
        archive.writestr(f"{info}/RECORD", "")
    return wheel.name
"""


def pure_python_tree(where: Path, name: str) -> Path:
    """A source tree build-wheel.sh builds in a second, offline and with nothing installed: an
    in-tree build backend that writes one empty module."""
    tree = where / name
    tree.mkdir(parents=True)
    (tree / "backend.py").write_text(BACKEND)
    (tree / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    return tree


def start_build(tree: Path, steps: Path, out: Path) -> subprocess.Popen[str]:
    """docker/scripts/build-wheel.sh as a compile step runs it (CPU, budget MAX_JOBS=4), with
    the steps' folder where the image mounts it given by TORCHKILN_STEPS_DIR."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO / "src"),
        "HOME": str(out),
        "USE_CUDA": "0",
        "MAX_JOBS": "4",
        "TORCHKILN_STEPS_DIR": str(steps),
        "PIP_NO_INDEX": "1",
    }
    script = REPO / "docker" / "scripts" / "build-wheel.sh"
    return subprocess.Popen(
        ["bash", str(script), str(tree), str(out / tree.name)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def jobs_line(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-3000:]
    return next(line for line in output.splitlines() if line.startswith("torchkiln-jobs:"))


def test_two_real_build_steps_at_once_split_the_budget_and_one_alone_takes_it(
    tmp_path: Path,
) -> None:
    steps = tmp_path / "steps"
    steps.mkdir()
    first, second = (pure_python_tree(tmp_path, name) for name in ("kiln_a", "kiln_b"))
    started = [start_build(tree, steps, tmp_path) for tree in (first, second)]
    lines = sorted(jobs_line(process) for process in started)
    assert lines == [
        f"torchkiln-jobs: {name} MAX_JOBS=2 (MAX_JOBS, shared by the 2 compile steps running "
        "at once)"
        for name in ("kiln_a", "kiln_b")
    ]
    # Both ended: their markers are stale, and a step alone gets the whole budget.
    alone = jobs_line(start_build(first, steps, tmp_path))
    assert alone == "torchkiln-jobs: kiln_a MAX_JOBS=4 (MAX_JOBS)"

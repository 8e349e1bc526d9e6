#!/usr/bin/env python3
"""Print invoke build's time estimate against the measured build, per BUILD_MODE, in one run.

Each mode is a real fixture build through the product (`invoke build --no-up`) in a temporary
copy of the repository with the test settings (tests/integration/projects.py): the estimate is
the line the build printed before it started, the measured time its wall clock. One line per
mode: the range, the measured time, measured / the range's middle, and whether it is within
+-30 % of it (the goal). Each build is a first one: a line added to the copy's net.sh, which
every stage's scripts read, keeps the engine's build cache from answering any step, and a
compile cache mount of the copy's own keeps sccache from answering any compile.

- wheels: the CPU torch 2.13.0 and docker/requirements.txt from a local wheelhouse (downloaded
  here with pip first, or given with --wheelhouse), as the integration tests build it;
- torch-wheel: as the CI's CUDA fixture builds it (tests/integration/test_cuda.py): the official
  CUDA torch with NVIDIA's wheels from the index (CUDA_FROM=pypi, about 3 GB to download),
  torchvision from the fixture's folder and torchsort 0.1.10 compiled for 8.6;
- source: the fixture's pytorch and vision folders compiled for the CPU. These are small
  stand-ins for PyTorch, and the estimate of a source build is PyTorch's published core-hours
  until the checkout has compiled torch once: then it is that record, scaled. So a first build
  teaches it (as a user's first build does), and a second one, again with nothing cached, is
  the one measured. Its settings are the first one's: this shows that a recorded build is said
  again within the goal; the scaling to other archs and jobs is PyTorch's published ratios
  (tests/unit/test_build_estimate.py).

Usage: python3 scripts/measure_estimate.py [--modes wheels,torch-wheel,source] [--wheelhouse DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "integration")]

import projects as images  # noqa: E402

from torchkiln import runner  # noqa: E402

GOAL = 0.30

# The compile cache every compile step mounts (or this script's own, from an earlier build).
SCCACHE_MOUNT = re.compile(r"id=(?:torchkiln|tktest-[\w.-]+)-sccache,")


def seconds_of(text: str) -> float:
    """'1 h 2 min', '9 min 51 s', '40 s' in seconds."""
    found = {unit: float(number) for number, unit in re.findall(r"(\d+) (h|min|s)\b", text)}
    return found.get("h", 0) * 3600 + found.get("min", 0) * 60 + found.get("s", 0)


def estimated_range(output: str) -> tuple[str, float, float]:
    """The estimate line a build printed and its range in seconds."""
    line = next((ln for ln in output.splitlines() if ln.startswith("estimate:")), "")
    match = re.search(r" takes (?:about (.+?)|(.+?) to (.+?))(?: the first time| \(|;|$)", line)
    if not match:
        return line, 0.0, 0.0
    if match[1]:
        return line, seconds_of(match[1]), seconds_of(match[1])
    return line, seconds_of(match[2]), seconds_of(match[3])


def longest_steps(output: str, count: int = 6) -> str:
    """The build's longest steps ('[stage n/m] …: 80 s'), for where the time went."""
    names = {number: name for number, name in re.findall(r"^#(\d+) \[([^\]]+)\]", output, re.M)}
    done = re.findall(r"^#(\d+) DONE ([\d.]+)s", output, re.M)
    spent = sorted(((float(s), names.get(n, f"#{n}")) for n, s in done), reverse=True)
    return ", ".join(f"{name}: {seconds:.0f} s" for seconds, name in spent[:count])


def wheelhouse(directory: Path) -> Path:
    """The CPU torch 2.13.0 and docker/requirements.txt, downloaded on the host."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "torch==2.13.0"]
    command += ["--dest", str(directory), "--requirement", str(ROOT / "docker/requirements.txt")]
    subprocess.run(command, check=True, timeout=900)
    return directory


def build(work: Path, mode: str, house: Path) -> tuple[str, float]:
    """Build the train service of a fresh test project in `mode`: (its output, seconds)."""
    values = {"BUILD_MODE": mode}
    if mode == "torch-wheel":
        values |= {"CUDA_FROM": "pypi", "MAX_JOBS": ""}
    project = images.make_project(work, f"estimate-{mode}", **values)
    try:
        if mode == "source":
            first_build(project, mode, house, "teaches")
        return first_build(project, mode, house, "measured")
    finally:
        images.remove_project(project)


def first_build(project: images.Project, mode: str, house: Path, tag: str) -> tuple[str, float]:
    """Build the project's train service with no step from the build cache: (output, seconds)."""
    # A first build: every stage's scripts source net.sh, so a line of its own in this copy's
    # makes no step of it found in the engine's build cache (pip's and apt's download caches,
    # which a user's later builds have too, stay).
    net = project.root / "docker" / "scripts" / "net.sh"
    net.write_text(net.read_text() + f"# {project.name}: a first build, {tag}\n")
    # And no compile from sccache's local cache: the copy's compile steps mount one of their own,
    # empty (what was compiled before, by the tests or by this script, would be hits).
    dockerfile = project.root / "docker" / "Dockerfile"
    text, mounts = SCCACHE_MOUNT.subn(f"id={project.name}-{tag}-sccache,", dockerfile.read_text())
    if not mounts:
        raise SystemExit("docker/Dockerfile mounts no torchkiln-sccache cache: update this script")
    dockerfile.write_text(text)
    args = ["build", "--no-up"]
    if mode == "source":
        args += images.fixture_sources(project)
    elif mode == "torch-wheel":
        args += ["--cca", "8.6", "--source", f"vision={project.root / 'tests/fixtures/vision'}"]
        args += ["--extension", "torchsort==0.1.10"]
    else:
        args += ["--torch", "2.13.0", "--wheelhouse", str(house)]
    started = time.monotonic()
    output = images.assert_ok(project.invoke(*args))
    return output, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--modes", default="wheels,torch-wheel,source")
    parser.add_argument("--wheelhouse", default="", help="a wheelhouse to use (else downloaded)")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchkiln-estimate-"))
    rows = []
    try:
        house = Path(options.wheelhouse or work / "wh")
        if not options.wheelhouse and "wheels" in options.modes.split(","):
            wheelhouse(house)
        for mode in options.modes.split(","):
            output, seconds = build(work, mode, house)
            line, low, high = estimated_range(output)
            middle = (low + high) / 2
            ratio = seconds / middle if middle else float("inf")
            rows.append((mode, low, high, seconds, ratio))
            print(f"{mode}: {line}; measured {seconds:.0f} s", flush=True)
            print(f"  longest steps: {longest_steps(output)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'mode':<12} {'estimate':<22} {'measured':<12} measured/middle  goal +-{GOAL:.0%}")
    for mode, low, high, seconds, ratio in rows:
        said = runner.format_duration(low), runner.format_duration(high)
        said = f"about {said[0]}" if said[0] == said[1] else f"{said[0]} to {said[1]}"
        verdict = "met" if abs(ratio - 1) <= GOAL else "NOT met"
        print(f"{mode:<12} {said:<22} {runner.format_duration(seconds):<12} {ratio:.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Print what sccache saves an extension rebuild on this machine: the warm-to-cold time ratio.

The extension is tests/fixtures/extension (three sources: ops.cpp, scale.cu, shift.cu), built
by `invoke wheels` for CCA 8.6 with CUDA from the index (CUDA_FROM=pypi, the official torch):

- cold: a copy whose shared header carries a new declaration, so every source misses the cache;
- warm: the same copy with a one-line change in shift.cu, so sccache serves ops.cpp and scale.cu.

Each figure is the extension's own build time as the build step reports it (`built in N s`,
pip wheel alone, not the torch install before it), with sccache's hits and misses, and the time
of the whole extension step. A first run also builds the stages before it (minutes, cached).
It works in a temporary copy of the repository with the CI settings (TORCHKILN_TEST_BASE_IMAGE or
debian:bookworm, Python 3.11, the host CA bundle) and removes what it made, except the cache.
Usage: python3 scripts/measure_extension_cache.py
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "integration")]

import projects as images  # noqa: E402

from torchkiln import buildlog, extensions  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "extension"


def build_once(project: images.Project, folder: Path) -> dict[str, object]:
    """Export the wheels built with the extension folder (the stages, not the train image);
    the extension's report, sccache counts and step time."""
    vision = f"vision={project.root / 'tests' / 'fixtures' / 'vision'}"
    dest = project.root / f"dist-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    args = ["--dest", str(dest), "--cca", "8.6", "--source", vision, "--extension", str(folder)]
    output = images.assert_ok(project.invoke("wheels", *args))
    wall = time.monotonic() - started
    (report,) = extensions.reports(output)
    counts = re.search(r"torchkiln-sccache: kiln_gencode_ops hits=(\d+) misses=(\d+)", output)
    step = dict(buildlog.stage_seconds(output)).get("extensions-build", 0.0)
    return {
        "seconds": float(report["seconds"] or 0.0),  # type: ignore[arg-type]
        "hits": int(counts[1]) if counts else 0,
        "misses": int(counts[2]) if counts else 0,
        "step": step,
        "wall": wall,
    }


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="torchkiln-measure-ext-"))
    project = images.make_project(
        work, "measureext", CUDA_FROM="pypi", BUILD_MODE="torch-wheel", MAX_JOBS=""
    )
    folder = work / "extension"
    shutil.copytree(FIXTURE, folder)
    header = folder / "csrc" / "ops.h"
    # A line the compiler sees (a comment or an unused macro would leave the preprocessed code as
    # it was, and sccache would serve it), in the header every source includes.
    header.write_text(header.read_text() + f"static const long kiln_cold = {time.time_ns()}L;\n")
    try:
        cold = build_once(project, folder)
        kernel = folder / "csrc" / "shift.cu"
        kernel.write_text(kernel.read_text() + f"static const long touched = {time.time_ns()}L;\n")
        warm = build_once(project, folder)
    finally:
        images.remove_project(project)
        shutil.rmtree(work, ignore_errors=True)
    for label, figures in (("cold", cold), ("warm", warm)):
        hits, misses = figures["hits"], figures["misses"]
        print(
            f"{label}: extension built in {figures['seconds']:.0f} s (sccache {hits} hits, "
            f"{misses} misses); its build step {figures['step']:.0f} s; "
            f"invoke wheels {figures['wall']:.0f} s"
        )
    ratio = warm["seconds"] / cold["seconds"] if cold["seconds"] else float("nan")  # type: ignore[operator]
    step_ratio = warm["step"] / cold["step"] if cold["step"] else float("nan")  # type: ignore[operator]
    if not warm["hits"]:
        print(
            "warning: the warm build had no sccache hit: the compile cache was emptied between "
            "the two builds (docker builder prune removes BuildKit's cache mounts); run again"
        )
    print(f"warm-to-cold ratio, the extension's build: {ratio:.2f}")
    print(f"warm-to-cold ratio, its whole build step (torch install included): {step_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

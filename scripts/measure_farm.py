#!/usr/bin/env python3
"""Print what the build farm does on this machine, and what it would do for a real torch build.

Measured: the PyTorch stand-in with 48 small C++ and 4 CUDA translation units (new each time, so
no cache has them), built by `invoke wheels` (CUDA_FROM=pypi, CCA 8.6) through the farm with one
build server (`invoke farm up`), then with two (`invoke farm join`, as another machine would):
the compiles each server ran (fan-out), those compiled here, and the torch-build step's time. On
one machine the servers share its cores, so the wall time says what the farm costs, not what
more machines gain; the fan-out says the work spreads.

On paper: the estimate's core-hours for a one-arch (8.6) torch source build, on 1, 4 and 16
build servers of 16 cores each beside a 16-job build machine, with the serial part (code
generation, links) staying on the build machine.

It works in a temporary copy of the repository with the CI settings and removes what it made,
except BuildKit's cache. Usage: python3 scripts/measure_farm.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "integration")]

import projects as images  # noqa: E402
from engines import free_port  # noqa: E402
from farmunits import add_units, container_address, farm_counts  # noqa: E402

from torchkiln import build, farm  # noqa: E402


def measured(project: images.Project, servers: int) -> str:
    dest = project.root / f"dist-{servers}"
    started = time.monotonic()
    output = images.assert_ok(
        project.invoke("wheels", "--dest", str(dest), *add_units(project, cpp=48))
    )
    wall = time.monotonic() - started
    local, dist, fell_back, per_server = farm_counts(output)
    step = dict(build.stage_seconds(output)).get("torch-build", 0.0)
    fan_out = ", ".join(f"{address} {count}" for address, count in sorted(per_server.items()))
    plural = "s" if servers > 1 else ""
    return (
        f"{servers} server{plural}: {dist} compiles on the farm ({fan_out or 'none'}), "
        f"{local} here, {fell_back} fell back; torch-build step {step:.0f} s, "
        f"invoke wheels {wall:.0f} s"
    )


def on_paper() -> list[str]:
    low, high = build.arch_units("8.6", True)
    lines = [f"on paper, a torch source build for CCA 8.6: {low:.0f}-{high:.0f} core-hours"]
    for servers in (1, 4, 16):
        spans = [
            build.SERIAL_HOURS[index] + farm.compile_hours(core, 16, 16 * servers)
            for index, core in enumerate((low, high))
        ]
        lines.append(
            f"  16-job build machine + {servers:>2} x 16-core servers: "
            f"{spans[0]:.1f}-{spans[1]:.1f} h (compile {low / (16 + 16 * servers):.2f}-"
            f"{high / (16 + 16 * servers):.2f} h, serial {build.SERIAL_HOURS[0]}-"
            f"{build.SERIAL_HOURS[1]} h)"
        )
    alone = [build.SERIAL_HOURS[i] + core / 16 for i, core in enumerate((low, high))]
    lines.append(f"  16-job build machine alone: {alone[0]:.1f}-{alone[1]:.1f} h")
    return lines


def main() -> int:
    print("\n".join(on_paper()), flush=True)
    work = Path(tempfile.mkdtemp(prefix="torchkiln-measure-farm-"))
    project = images.make_project(
        work,
        "measurefarm",
        CUDA_FROM="pypi",
        FARM_IMAGE=images.BASE,
        FARM_SCHEDULER_PORT=str(free_port()),
        FARM_SERVER_PORT=str(free_port()),
    )
    project.env["FARM_IMAGE_NAME"] = f"torchkiln-test/{project.name}-farm:latest"
    try:
        images.assert_ok(project.invoke("farm", "up"))
        one = measured(project, 1)
        url = f"http://{container_address(project, 'farm-scheduler')}:10600"
        images.assert_ok(project.invoke("farm", "join", "--url", url, "--port", str(free_port())))
        time.sleep(5)  # the second server's first heartbeat
        two = measured(project, 2)
    finally:
        project.invoke("farm", "down")
        project.run("docker", "compose", "--profile", "farm", "down", "--volumes", timeout=120)
        project.run("docker", "image", "rm", "--force", project.env["FARM_IMAGE_NAME"])
        images.remove_project(project)
        shutil.rmtree(work, ignore_errors=True)
    print(one)
    print(two)
    return 0


if __name__ == "__main__":
    sys.exit(main())

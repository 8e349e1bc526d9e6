"""The build farm's fixture, shared by tests/integration/test_farm.py and
scripts/measure_farm.py: many small translation units in the PyTorch stand-in (new each time, so
no cache has them), the summary line's farm figures, and a container's address on the bridge."""

from __future__ import annotations

import re
import uuid

from projects import Project

CPP_UNITS, CUDA_UNITS = 24, 4
LINE = re.compile(r"torchkiln-sccache: pytorch .*? local=(\d+) dist=(\d+) dist_errors=(\d+) "
                  r"servers=(\S+)")  # fmt: skip


def add_units(project: Project, cpp: int = CPP_UNITS, cuda: int = CUDA_UNITS) -> list[str]:
    """Small translation units no cache has seen in the stand-in's CMake projects (csrc/cpu/units,
    csrc/units); the --source flags that build it (with the vision stand-in)."""
    stand_in = project.root / "tests" / "fixtures" / "pytorch" / "csrc"
    tag = uuid.uuid4().hex[:12]
    for folder, suffix, count in (("cpu/units", "cpp", cpp), ("units", "cu", cuda)):
        (stand_in / folder).mkdir(exist_ok=True)
        for old in (stand_in / folder).glob(f"*.{suffix}"):
            old.unlink()
        for index in range(count):
            body = f"int unit_{suffix}_{index}_{tag}(int x) {{ return x * {index + 2}; }}\n"
            if suffix == "cu":
                body = (
                    f"__global__ void unit_{index}_{tag}(float* x) {{ x[threadIdx.x] *= "
                    f"{index + 2}.0f; }}\n"
                )
            (stand_in / folder / f"unit_{index}.{suffix}").write_text(body)
    vision = project.root / "tests" / "fixtures" / "vision"
    return ["--source", f"pytorch={stand_in.parent}", "--source", f"vision={vision}"]


def farm_counts(output: str) -> tuple[int, int, int, dict[str, int]]:
    """(compiled locally, compiled on the farm, fell back, compiles per server) of the stand-in."""
    found = LINE.search(output)
    assert found, output[-3000:]
    servers: dict[str, int] = {}
    if found[4] != "-":
        for item in found[4].split(","):
            address, _, count = item.rpartition(":")
            servers[address] = int(count)
    return int(found[1]), int(found[2]), int(found[3]), servers


def container_address(project: Project, service: str) -> str:
    """A farm service's address on the docker0 bridge."""
    ids = project.run("docker", "compose", "--profile", "farm", "ps", "-q", service).stdout.split()
    assert ids, f"{service} is not running"
    shown = project.run(
        "docker", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", ids[0]
    ).stdout.strip()
    assert shown, f"{service} has no address on the bridge"
    return shown

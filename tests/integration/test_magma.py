"""BUILD_MAGMA on the real engine: magma built for CCA reaches the PyTorch build; off, nothing
of it does, and changing its settings re-runs no build step.

The fixture tests/fixtures/magma (a tiny CMake project with magma's options and targets, which
records what it was given) stands in for magma's git checkout, passed as `--source magma=DIR`;
the pytorch fixture records MAGMA_HOME, USE_MAGMA and what the prefix held into its wheel.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from projects import (
    BUILD_STAGES,
    EXEC_TIMEOUT,
    Project,
    assert_ok,
    fixture_sources,
    make_project,
    remove_project,
)

from torchkiln import buildlog

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

MAGMA_STAGES = {"magma-clone", "magma-build"}
# One SASS-only, one arch-specific and one +PTX item, as a GPU host might ask.
MAGMA_CCA = "8.6 9.0a 12.0+PTX"
TORCH_BUILD_ENV = "python -c 'import json, torch; print(json.dumps(torch.build_env))'"


def magma_source(project: Project) -> list[str]:
    return ["--source", f"magma={project.root / 'tests' / 'fixtures' / 'magma'}"]


@pytest.fixture(scope="module")
def magma_project(tmp_path_factory: pytest.TempPathFactory):
    """The train service built with BUILD_MAGMA=1 from the magma fixture, and started."""
    project = make_project(
        tmp_path_factory.mktemp("magma"), "magma", BUILD_MAGMA="1", CUDA_FROM="pypi"
    )
    try:
        started = time.monotonic()
        args = ("build", "--cca", MAGMA_CCA, *fixture_sources(project), *magma_source(project))
        output = assert_ok(project.invoke(*args))
        print(f"\nBUILD_MAGMA=1 build: {time.monotonic() - started:.0f} s")
        yield project, output
    finally:
        remove_project(project)


def test_magma_is_built_for_the_cca_and_reaches_the_pytorch_build(magma_project) -> None:
    project, _ = magma_project
    torch_env = json.loads(assert_ok(project.exec("train", TORCH_BUILD_ENV)))
    print(f"\ntorch build saw: USE_MAGMA={torch_env['USE_MAGMA']} magma={torch_env['magma']}")
    assert torch_env["USE_MAGMA"] == "1"
    assert torch_env["MAGMA_HOME"] == "/opt/magma"
    assert torch_env["CMAKE_PREFIX_PATH"] == "/opt/magma"
    assert torch_env["TORCH_CUDA_ARCH_LIST"] == "8.6;9.0a;12.0+PTX"
    magma = torch_env["magma"]
    # What PyTorch's FindMAGMA looks for: lib/libmagma.* and include/magma.h under MAGMA_HOME;
    # magma_sparse, which PyTorch never uses, is not built.
    assert {"lib/libmagma.a", "include/magma.h"} <= set(magma["files"])
    assert "lib/libmagma_sparse.a" not in magma["files"]
    assert magma["build"] == {
        # Not passed: magma's GPU_TARGET names would override CMAKE_CUDA_ARCHITECTURES and lose
        # the -real/PTX choice; the fixture's default shows that nothing set it.
        "GPU_TARGET": "Kepler Maxwell Pascal",
        "CMAKE_CUDA_ARCHITECTURES": "86-real;90a-real;120",
        "MAGMA_CUDA_ARCH_MIN": "860",
        "CMAKE_CUDA_COMPILER_LAUNCHER": "sccache",
        "BUILD_SHARED_LIBS": "OFF",
        "USE_FORTRAN": "OFF",
        "MAGMA_ENABLE_CUDA": "ON",
        "CMAKE_POSITION_INDEPENDENT_CODE": "ON",
        "CMAKE_INSTALL_PREFIX": "/opt/magma",
    }
    inspected = project.run("docker", "image", "inspect", project.image("train"), timeout=60)
    labels = json.loads(assert_ok(inspected))[0]["Config"]["Labels"]
    assert labels["io.torchkiln.build-magma"] == "1"
    assert labels["io.torchkiln.magma-version"] == "2.10.0"
    # Static libraries linked into torch: the runtime image carries no magma prefix.
    assert (
        assert_ok(project.exec("train", "ls /opt/magma 2>&1 || echo absent"))
        .strip()
        .endswith("absent")
    )


def test_magma_off_leaves_the_pytorch_build_alone(tmp_path: Path) -> None:
    """BUILD_MAGMA=0: a new MAGMA_VERSION and a magma checkout re-run no build step."""
    project = make_project(tmp_path, "nomagma")
    try:
        args = ("build", "--no-up", "--cca", "8.6 9.0", *fixture_sources(project))
        assert_ok(project.invoke(*args))
        changed = Project(project.root, project.name, {**project.env, "MAGMA_VERSION": "2.9.9"})
        started = time.monotonic()
        output = assert_ok(changed.invoke(*args, *magma_source(project)))
        executed = buildlog.executed_steps(output)
        print(
            f"\nBUILD_MAGMA=0, MAGMA_VERSION changed: {time.monotonic() - started:.1f} s, "
            f"re-ran {executed}"
        )
        assert [step for step in executed if step[0] in BUILD_STAGES | MAGMA_STAGES] == []
        result = project.run(
            "docker",
            "run",
            "--rm",
            project.image("train"),
            "zsh",
            "-c",
            TORCH_BUILD_ENV,
            timeout=EXEC_TIMEOUT,
        )
        torch_env = json.loads(assert_ok(result))
        assert torch_env["USE_MAGMA"] is None and torch_env["MAGMA_HOME"] is None
        assert torch_env["magma"] is None
    finally:
        remove_project(project)


def test_magma_source_needs_a_cmake_checkout(tmp_path: Path) -> None:
    """`--source magma=DIR` is refused in seconds when DIR is no CMake project."""
    project = make_project(tmp_path, "badmagma", BUILD_MAGMA="1")
    try:
        empty = tmp_path / f"not-magma-{uuid.uuid4().hex[:6]}"
        empty.mkdir()
        result = project.invoke("--dry", "build", "--source", f"magma={empty}")
        assert result.returncode != 0
        assert "holds no CMakeLists.txt" in result.stderr, result.stdout + result.stderr
    finally:
        remove_project(project)

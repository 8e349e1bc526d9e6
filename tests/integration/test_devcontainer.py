"""The Dev Container (.devcontainer/) with the real Dev Containers CLI on the real engine.

The CLI is the one VS Code's Dev Containers extension is built on, installed with npm at a pinned
version. The project copy's train image is built first, as a user would with `invoke build`, in
wheels mode from the local wheelhouse with flags (--torch, --wheelhouse) that .env does not hold:
`devcontainer up` must start that image, never rebuild it from .env alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from projects import (
    Project,
    assert_ok,
    clean_environ,
    copy_repository,
    make_project,
    remove_project,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

CLI_VERSION = "0.89.0"
CLI_TIMEOUT = 180
WORKSPACE = "/opt/project"
# How the CLI's log shows a Compose build it runs (`docker compose … build train`).
BUILD_COMMAND = re.compile(r"docker compose .*\sbuild(\s|$)")


@dataclass
class DevContainerCLI:
    """The `devcontainer` program with an environment free of torchkiln settings."""

    program: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: int = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run one CLI command; never raises on failure."""
        return subprocess.run(
            [str(self.program), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def up(self, workspace: Path) -> tuple[dict, str]:
        """`devcontainer up`: assert it succeeded and return its result and its log."""
        result = self.run("up", "--workspace-folder", str(workspace))
        log = assert_ok(result)
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        assert outcome["outcome"] == "success", log[-4000:]
        assert not [line for line in result.stderr.splitlines() if "Error" in line], log[-4000:]
        return outcome, result.stderr


def unavailable(reason: str) -> None:
    """Skip without the CLI, or fail when TORCHKILN_REQUIRE_DOCKER=1 (CI)."""
    if os.environ.get("TORCHKILN_REQUIRE_DOCKER") == "1":
        pytest.fail(f"TORCHKILN_REQUIRE_DOCKER=1 but the Dev Containers CLI is unusable: {reason}")
    pytest.skip(f"no Dev Containers CLI: {reason}")


@pytest.fixture(scope="module")
def devcontainer_cli(tmp_path_factory: pytest.TempPathFactory) -> DevContainerCLI:
    """@devcontainers/cli installed with npm into a temporary directory."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        unavailable("node and npm must be on PATH to install @devcontainers/cli")
    prefix = tmp_path_factory.mktemp("devcontainers-cli")
    package = f"@devcontainers/cli@{CLI_VERSION}"
    install = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", package]
    try:
        result = subprocess.run(install, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        unavailable(f"npm install {package} did not finish in 300 s")
    if result.returncode != 0:
        unavailable(f"npm install {package} failed: {result.stderr.strip()[-500:]}")
    env = clean_environ()
    # initializeCommand runs `python3`: this Python, which has invoke, comes first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The CLI keeps its generated Compose files under TMPDIR; they go with the test's files.
    env["TMPDIR"] = str(tmp_path_factory.mktemp("devcontainers-cli-tmp"))
    return DevContainerCLI(prefix / "node_modules" / ".bin" / "devcontainer", env)


@pytest.fixture(scope="module")
def built_project(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path):
    """A project copy (UID 1234) whose train image `invoke build` made from the wheelhouse."""
    project = make_project(
        tmp_path_factory.mktemp("devcontainer"), "devcontainer", BUILD_MODE="wheels"
    )
    try:
        build = ("build", "--no-up", "--torch", "2.13.0", "--wheelhouse", str(wheelhouse))
        assert_ok(project.invoke(*build))
        yield project
    finally:
        remove_project(project)


def image_id(project: Project) -> str:
    result = project.run(
        "docker", "image", "inspect", "--format", "{{.Id}}", project.image("train")
    )
    return assert_ok(result).strip()


def test_devcontainer_runs_the_built_image_as_the_user_in_the_project(
    devcontainer_cli: DevContainerCLI, built_project: Project
) -> None:
    project = built_project
    built = image_id(project)
    outcome, log = devcontainer_cli.up(project.root)
    assert outcome["composeProjectName"] == project.name
    assert outcome["remoteWorkspaceFolder"] == WORKSPACE
    assert outcome["remoteUser"] == "1234"  # the container's own user, UID from .env
    # The image invoke build made, untouched: the CLI built nothing.
    assert not [line for line in log.splitlines() if BUILD_COMMAND.search(line)]
    assert image_id(project) == built
    running = project.run("docker", "compose", "ps", "--quiet", "train", timeout=60)
    assert assert_ok(running).strip() == outcome["containerId"]

    script = (
        "import json, os, torch; open('made-in-devcontainer', 'w').close(); "
        "print(json.dumps([torch.__version__, os.getuid(), os.getgid(), os.getcwd()]))"
    )
    # Found by the workspace folder alone, as an IDE or a user finds it.
    result = devcontainer_cli.run(
        *("exec", "--workspace-folder", str(project.root)),
        *("python", "-c", script),
        timeout=120,
    )
    assert_ok(result)
    printed = result.stdout.strip().splitlines()[-1]
    print(f"\ndevcontainer exec printed: {printed}")
    assert json.loads(printed) == ["2.13.0+cpu", 1234, 1234, WORKSPACE]
    made = project.root / "made-in-devcontainer"
    assert (made.stat().st_uid, made.stat().st_gid) == (1234, 1234)

    # Reopening attaches to the running container: a job running in it survives.
    reopened, _ = devcontainer_cli.up(project.root)
    assert reopened["containerId"] == outcome["containerId"]


def test_devcontainer_writes_env_then_refuses_a_missing_image(
    devcontainer_cli: DevContainerCLI, tmp_path: Path
) -> None:
    """A fresh checkout: .env is written by invoke env, and no build starts from the IDE."""
    checkout = tmp_path / f"tktest-fresh-{uuid.uuid4().hex[:8]}"
    checkout.mkdir()
    copy_repository(checkout)
    try:
        result = devcontainer_cli.run("up", "--workspace-folder", str(checkout))
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-4000:]
        assert json.loads(result.stdout.strip().splitlines()[-1])["outcome"] == "error"
        assert "is not built yet; run invoke build" in output, output[-4000:]
        assert "Traceback" not in output
        assert "COMPOSE_FILE=compose/compose.yaml" in (checkout / ".env").read_text()
        leftovers = subprocess.run(
            ["docker", "compose", "ps", "--all", "--quiet"],
            cwd=checkout,
            env=devcontainer_cli.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert assert_ok(leftovers).strip() == ""
    finally:
        subprocess.run(
            ["docker", "compose", "down", "--timeout", "1"],
            cwd=checkout,
            env=devcontainer_cli.env,
            capture_output=True,
            timeout=120,
        )

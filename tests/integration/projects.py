"""Test projects on the real engine: temporary copies of the repository with their own .env,
Compose project and image tags, built on a plain Debian 12 image with the host's CA bundle as the
build secret. Shared by the integration tests; fixtures are in conftest.

The base image is public Debian 12 by default (pulled when missing); TORCHKILN_TEST_BASE_IMAGE
names a local replacement, as CI does where no registry is reachable.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from torchkiln import build as builder
from torchkiln import buildplan, envfile, settings

REPO = Path(__file__).resolve().parents[2]
BASE = os.environ.get("TORCHKILN_TEST_BASE_IMAGE") or "debian:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TIMEOUT = 1500
# The source stand-ins of every project copy carry one mark per test session (a file outside
# the compile): the session's builds share their steps, and a step that an earlier session left
# in the engine's build cache never stands in for a compile a test reads the log of.
SESSION_MARK = uuid.uuid4().hex
MARKED_FIXTURES = ("pytorch", "vision", "magma")
EXEC_TIMEOUT = 120
BUILD_STAGES = {
    "base",
    "fetch-base",
    "build-base",
    "cuda-image",
    "cuda-pypi",
    "cuda-none",
    "pytorch-clone",
    "vision-clone",
    "audio-clone",
    "torch-build",
    "torch-download",
    "torch-env",
    "vision-build",
    "audio-build",
    "wheels-source",
    "wheels-download",
}


@dataclass
class Project:
    """A temporary copy of the repository with its own .env, Compose project and images."""

    root: Path
    name: str
    env: dict[str, str]

    def run(self, *command: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a command in the project with a clean environment; never raises on failure."""
        return subprocess.run(
            list(command),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def invoke(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of the project's invoke tasks."""
        return self.run(sys.executable, "-m", "invoke", *args)

    def exec(self, service: str, script: str) -> subprocess.CompletedProcess[str]:
        """Run a zsh command in the running service, as its user."""
        return self.run(
            "docker", "compose", "exec", "-T", service, "zsh", "-c", script, timeout=EXEC_TIMEOUT
        )

    def image(self, service: str) -> str:
        """The tag of the service's image."""
        values = dotenv_values(self.root / ".env")
        return values[buildplan.IMAGE_SETTING[service]]


def dotenv_values(path: Path) -> dict[str, str]:
    from torchkiln import envfile

    return {name: value or "" for name, value in envfile.read(path).items()}


def assert_ok(result: subprocess.CompletedProcess[str]) -> str:
    """Assert exit 0 and no ERROR line; return stdout and stderr together."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert not errors, errors
    return output


def clean_environ() -> dict[str, str]:
    """The test process's environment without any torchkiln setting or proxy variable."""
    names = {setting.name for setting in settings.SETTINGS} | set(builder.compose.PROXY_ARGS)
    names |= {"COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PATH_SEPARATOR"}
    return {name: value for name, value in os.environ.items() if name not in names}


def copy_repository(target: Path) -> None:
    """Copy the files git would see (tracked and untracked, not ignored) into target, and mark
    its source stand-ins with this session's mark."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for fixture in MARKED_FIXTURES:
        folder = target / "tests" / "fixtures" / fixture
        if folder.is_dir():
            (folder / "TEST-SESSION").write_text(SESSION_MARK, encoding="utf-8")


@functools.cache
def base_image_problem() -> str | None:
    """Say why the test base image is unusable (absent and not pullable), None when it is here."""
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode == 0:
        return None
    pulled = subprocess.run(
        ["docker", "pull", "--quiet", BASE], capture_output=True, text=True, timeout=600
    )
    if pulled.returncode == 0:
        return None
    reason = " ".join(pulled.stderr.split())[-200:]
    return (
        f"test base image {BASE} is not here and cannot be pulled ({reason}); set "
        f"TORCHKILN_TEST_BASE_IMAGE to a local Debian 12 image"
    )


# Free GB at the engine's root a test project needs: a CUDA one (CUDA_FROM=pypi) takes about 3 GB
# of NVIDIA wheels and leaves gigabytes in BuildKit's cache, a CPU one far less.
FREE_DISK_FLOOR_GB = {"pypi": 30, "other": 10}
# BuildKit's cache is the engine's, not the suite's: keyed by content and shared with every other
# project (a contributor's hours of PyTorch compiles), so the suite never deletes it, except on
# an engine of its own that says so (CI's throw-away engine).
PRUNE_OPT_IN = "TORCHKILN_TEST_PRUNE_CACHE"


def make_room(cuda_from: str = "none") -> None:
    """Skip the test, saying what to do, when the engine's disk runs low; never delete anyone's
    cache for room.

    With TORCHKILN_TEST_PRUNE_CACHE=1 (an engine that serves the suite alone) the build cache is
    emptied instead, all of it: a partial prune keeps the records behind existing images' layers
    and drops the steps' results, so a later build is all CACHED while an export or a changed
    later stage compiles again, and a test of what the cache spares would fail for a reason of
    its own.
    """
    floor = FREE_DISK_FLOOR_GB["pypi" if cuda_from == "pypi" else "other"]
    root = subprocess.run(
        ["docker", "info", "--format", "{{.DockerRootDir}}"], capture_output=True, text=True
    ).stdout.strip()
    if not root or not os.path.isdir(root):
        return
    free_gb = shutil.disk_usage(root).free / 1e9
    if free_gb >= floor:
        return
    if os.environ.get(PRUNE_OPT_IN) == "1":
        print(f"\nless than {floor} GB free at {root}: emptying the build cache")
        command = ["docker", "builder", "prune", "--all", "--force"]
        subprocess.run(command, capture_output=True, timeout=600)
        return
    pytest.skip(
        f"only {free_gb:.0f} GB free at {root}, less than the {floor} GB this test needs; the "
        f"suite deletes no build cache of this engine (it is every project's): free space "
        f"yourself, or set {PRUNE_OPT_IN}=1 on an engine that serves the suite alone"
    )


def require_base_image() -> None:
    """Skip (or, with TORCHKILN_REQUIRE_DOCKER=1, fail) when the base image is unusable."""
    problem = base_image_problem()
    if problem and os.environ.get("TORCHKILN_REQUIRE_DOCKER") == "1":
        pytest.fail(problem, pytrace=False)
    if problem:
        pytest.skip(problem)


def make_project(tmp: Path, label: str, **values: str) -> Project:
    """Create a project copy whose .env builds on the Debian base with no GPU runtime."""
    require_base_image()
    make_room(values.get("CUDA_FROM", "none"))
    name = f"tktest-{label}-{uuid.uuid4().hex[:8]}"
    root = tmp / name
    root.mkdir()
    copy_repository(root)
    env_values = {
        "COMPOSE_FILE": "compose/compose.yaml:compose/cpu.yaml",
        "COMPOSE_PROJECT_NAME": name,
        "UID": "1234",
        "GID": "1234",
        "USR": "alice",
        "GRP": "alice",
        "CCA": "8.6",
        # A CPU build unless a test asks for CUDA (CUDA_FROM=pypi compiles real CUDA code).
        "CUDA_FROM": "none",
        "MAX_JOBS": "2",
        # The fixtures are small: a real PyTorch source build's 40 GB floor does not apply.
        "MIN_FREE_DISK_GB": "5",
        "USE_NCCL": "0",
        "PYTHON_VERSION": "3.11",
        "BUILD_IMAGE": BASE,
        "TRAIN_IMAGE": BASE,
        "CA_BUNDLE": CA_BUNDLE,
        "SHM_SIZE": "256mb",
        "TRAIN_IMAGE_NAME": f"torchkiln-test/{name}-train:latest",
        "FULL_IMAGE_NAME": f"torchkiln-test/{name}-full:latest",
        "NGC_IMAGE_NAME": f"torchkiln-test/{name}-ngc:latest",
        **values,
    }
    # The project belongs to the configured user, as a checkout on a real host does.
    if os.geteuid() == 0:
        os.chown(root, int(env_values["UID"]), int(env_values["GID"]))
    else:  # without root, let the container user write into the copy all the same
        root.chmod(0o777)
    text = "".join(f"{key}={envfile.quote(value)}\n" for key, value in env_values.items())
    (root / ".env").write_text(text, encoding="utf-8")
    return Project(root=root, name=name, env=clean_environ())


def remove_project(project: Project) -> None:
    """Remove what the project made: its containers and its images, the untagged ones its
    rebuilds left included (they carry its checkout's label). BuildKit's cache stays."""
    project.run("docker", "compose", "down", "--timeout", "1", timeout=120)
    # Also the project it was made with, should a test have renamed it (invoke env --force).
    project.run("docker", "compose", "-p", project.name, "down", "--timeout", "1", timeout=120)
    label = (
        f"label={builder.compose.CHECKOUT_LABEL}={builder.compose.checkout_identity(project.root)}"
    )
    listed = project.run("docker", "image", "ls", "--all", "--quiet", "--filter", label)
    left = listed.stdout.split() if listed.returncode == 0 else []
    for service in settings.SERVICES:
        project.run("docker", "image", "rm", "--force", project.image(service), timeout=120)
    if left:
        project.run("docker", "image", "rm", "--force", *left, timeout=120)
    shutil.rmtree(project.root, ignore_errors=True)


def fixture_sources(project: Project) -> list[str]:
    fixtures = project.root / "tests" / "fixtures"
    return [
        "--source",
        f"pytorch={fixtures / 'pytorch'}",
        "--source",
        f"vision={fixtures / 'vision'}",
    ]

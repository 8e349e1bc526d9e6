"""Images shared by the integration tests, built once per test session and always removed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import SecondEngine
from projects import REPO, assert_ok, fixture_sources, make_project, remove_project


@pytest.fixture(scope="session")
def source_project(tmp_path_factory: pytest.TempPathFactory):
    """The train service built from fixture sources for CCA '8.6 9.0', UID 1234, and started."""
    project = make_project(tmp_path_factory.mktemp("images"), "source")
    try:
        started = time.monotonic()
        result = project.invoke("build", "--cca", "8.6 9.0", *fixture_sources(project))
        output = assert_ok(result)
        print(f"\nsource build (cold or warm cache): {time.monotonic() - started:.0f} s")
        yield project, output
    finally:
        remove_project(project)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CPU torch 2.13.0 and docker/requirements.txt, downloaded on the host."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "torch==2.13.0",
            "--dest",
            str(directory),
            "--requirement",
            str(REPO / "docker" / "requirements.txt"),
        ],
        check=True,
        timeout=600,
    )
    return directory


@pytest.fixture(scope="session")
def wheels_project(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path):
    """The train service in BUILD_MODE=wheels from the local wheelhouse, as root (UID 0)."""
    project = make_project(
        tmp_path_factory.mktemp("images"),
        "wheels",
        BUILD_MODE="wheels",
        UID="0",
        GID="0",
        USR="root",
        GRP="root",
    )
    try:
        result = project.invoke("build", "--torch", "2.13.0", "--wheelhouse", str(wheelhouse))
        yield project, assert_ok(result)
    finally:
        remove_project(project)


@pytest.fixture(scope="module")
def second_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecondEngine]:
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        message = "a second dockerd needs root and dockerd on PATH"
        if os.environ.get("TORCHKILN_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    # A short path: the socket's must fit in a sun_path (108 bytes).
    directory = Path(tempfile.mkdtemp(prefix="tk-engine-", dir="/tmp"))
    engine = SecondEngine(directory)
    try:
        engine.setup_network()
        engine.start()
        yield engine
    finally:
        engine.close()
        shutil.rmtree(directory, ignore_errors=True)

"""Images shared by the integration tests, built once per test session and always removed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
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

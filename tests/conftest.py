"""Shared fixtures: the repository root, and the real Docker engine for integration tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def engine_problem() -> str | None:
    """Say why no Docker engine with Compose v2 is usable here, or None when one is."""
    if not shutil.which("docker"):
        return "no docker client on PATH"
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} timed out"
        if result.returncode != 0:
            return f"{' '.join(command)} failed: {result.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def repo() -> Path:
    """Return the repository root."""
    return REPO


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip without a reachable engine, or fail when TORCHKILN_REQUIRE_DOCKER=1 (CI)."""
    problem = engine_problem()
    if problem is None:
        return
    if os.environ.get("TORCHKILN_REQUIRE_DOCKER") == "1":
        pytest.fail(f"TORCHKILN_REQUIRE_DOCKER=1 but the Docker engine is unusable: {problem}")
    pytest.skip(f"no Docker engine: {problem}")

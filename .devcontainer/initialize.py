#!/usr/bin/env python3
"""Prepare the host for the dev container; devcontainer.json runs it as initializeCommand.

Writes .env with `invoke env` when it is missing, then makes sure a train container exists,
created from the image `invoke build` made, so that the Dev Containers CLI starts and attaches
to it. Without one, the CLI would run `docker compose build train` itself: that build sees only
.env, not the flags given to invoke build (--torch, --wheelhouse, --source), and can start an
hours-long compile with none of the preflight checks. A running container is left as it is.

Standard library only: it runs on the host before anything is known about its Python packages.
Usage: initialize.py WORKSPACE_FOLDER (devcontainer.json's workspaceFolder, checked here).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "train"
TIMEOUT = 300


class Refusal(Exception):
    """A precondition the user must fix; its text is the one line to print."""


def invoke_command(root: Path) -> list[str] | None:
    """How to run invoke here: this Python's module, the checkout's .venv, or PATH."""
    if importlib.util.find_spec("invoke") is not None:
        return [sys.executable, "-m", "invoke"]
    for candidate in (root / ".venv" / "bin" / "invoke", shutil.which("invoke")):
        if candidate and Path(candidate).is_file():
            return [str(candidate)]
    return None


def run(command: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    """Run a command in the checkout; a missing program or a hang is a Refusal."""
    try:
        return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise Refusal(f"{command[0]} is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise Refusal(f"{' '.join(command)} did not finish in {TIMEOUT} s") from None


def ensure_env(root: Path) -> None:
    """Write .env with `invoke env` when it is missing."""
    if (root / ".env").is_file():
        return
    invoke = invoke_command(root)
    if invoke is None:
        raise Refusal(
            f"{root / '.env'} is missing and invoke is not installed; in {root} run "
            "pip install -e . && invoke env, then reopen the dev container"
        )
    result = run([*invoke, "env"], root)
    print(result.stdout, end="")
    if result.returncode != 0:
        raise Refusal(f"invoke env failed: {result.stderr.strip()}")


def train_service(root: Path) -> dict:
    """The train service as Compose resolves it from .env (COMPOSE_FILE and its values)."""
    result = run(["docker", "compose", "config", "--format", "json", SERVICE], root)
    if result.returncode != 0:
        raise Refusal(f"docker compose config failed: {result.stderr.strip()}")
    return json.loads(result.stdout)["services"][SERVICE]


def check_service(service: dict, workspace_folder: str) -> str:
    """Refuse a workspaceFolder other than PROJECT_ROOT; return the service's image."""
    project_root = service.get("working_dir", "")
    if project_root != workspace_folder:
        raise Refusal(
            f"PROJECT_ROOT is {project_root} but devcontainer.json's workspaceFolder is "
            f"{workspace_folder}; set workspaceFolder to {project_root}"
        )
    return service["image"]


def create(root: Path, image: str) -> None:
    """Create train from its existing image unless a container exists; never build."""
    if run(["docker", "image", "inspect", image], root).returncode != 0:
        raise Refusal(
            f"image {image} (TRAIN_IMAGE_NAME) is not built yet; run invoke build in {root} "
            "(invoke doctor checks the host first), then reopen the dev container"
        )
    command = ["docker", "compose", "create", "--no-build", "--no-recreate", SERVICE]
    result = run(command, root)
    if result.returncode != 0:
        raise Refusal(f"{' '.join(command)} failed: {result.stderr.strip()}")
    print(f"torchkiln: the {SERVICE} container runs {image}")


def main(argv: list[str]) -> int:
    workspace_folder = argv[1] if len(argv) > 1 else "/opt/project"
    try:
        ensure_env(ROOT)
        create(ROOT, check_service(train_service(ROOT), workspace_folder))
    except Refusal as refusal:
        print(f"torchkiln: {refusal}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Prepare the host for the dev container; devcontainer.json runs it as initializeCommand.

Writes .env with `invoke env` when it is missing, then makes sure a train container exists,
created from the image `invoke build` made, so that the Dev Containers CLI starts and attaches
to it. Without one, the CLI would run `docker compose build train` itself: that build sees only
.env, not the flags given to invoke build (--torch, --wheelhouse, --source), and can start an
hours-long compile with none of the preflight checks. A running container is left as it is.
The container carries the labels the CLI finds its containers by (the workspace folder and this
devcontainer.json), so `devcontainer exec --workspace-folder .` finds the one `up` started.

Standard library only: it runs on the host before anything is known about its Python packages.
Usage: initialize.py WORKSPACE_FOLDER [LOCAL_FOLDER] (devcontainer.json's workspaceFolder, checked
here; the folder the CLI was given, its ${localWorkspaceFolder}).
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
# The labels the Dev Containers CLI finds a workspace's container by.
LOCAL_FOLDER_LABEL = "devcontainer.local_folder"
CONFIG_FILE_LABEL = "devcontainer.config_file"
# Where the Compose override with those labels is written (invoke build's own state folder).
LABELS_FILE = ".torchkiln/devcontainer-labels.json"


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


def compose_files(root: Path) -> str:
    """COMPOSE_FILE as Compose reads it here: the environment's, else .env's, else its default."""
    import os

    if os.environ.get("COMPOSE_FILE"):
        return os.environ["COMPOSE_FILE"]
    for line in reversed((root / ".env").read_text(encoding="utf-8").splitlines()):
        name, sep, value = line.strip().partition("=")
        if sep and name.removeprefix("export ").strip() == "COMPOSE_FILE":
            return value.strip().strip("'\"")
    return "compose/compose.yaml"


def labels_override(root: Path, local_folder: str) -> Path:
    """Write the Compose override that labels train as the CLI labels its containers."""
    config = Path(local_folder) / ".devcontainer" / "devcontainer.json"
    labels = {LOCAL_FOLDER_LABEL: local_folder, CONFIG_FILE_LABEL: str(config)}
    # Compose reads $ in any value of its files: $$ is a literal one.
    escaped = {name: value.replace("$", "$$") for name, value in labels.items()}
    document = {"services": {SERVICE: {"labels": escaped}}}
    file = root / LABELS_FILE
    file.parent.mkdir(exist_ok=True)
    file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return file


def create(root: Path, image: str, local_folder: str = "") -> None:
    """Create train from its existing image unless a container exists; never build. With the
    CLI's folder, the container carries its labels."""
    import os

    if run(["docker", "image", "inspect", image], root).returncode != 0:
        raise Refusal(
            f"image {image} (TRAIN_IMAGE_NAME) is not built yet; run invoke build in {root} "
            "(invoke doctor checks the host first), then reopen the dev container"
        )
    compose = ["docker", "compose"]
    if local_folder:  # the files Compose reads here, and the labels: as invoke build does
        separator = os.environ.get("COMPOSE_PATH_SEPARATOR", os.pathsep)
        files = [*compose_files(root).split(separator), str(labels_override(root, local_folder))]
        compose += ["--env-file", ".env", *(arg for name in files if name for arg in ("-f", name))]
    command = [*compose, "create", "--no-build", "--no-recreate", SERVICE]
    result = run(command, root)
    if result.returncode != 0:
        raise Refusal(f"{' '.join(command)} failed: {result.stderr.strip()}")
    print(f"torchkiln: the {SERVICE} container runs {image}")


def main(argv: list[str]) -> int:
    workspace_folder = argv[1] if len(argv) > 1 else "/opt/project"
    local_folder = argv[2] if len(argv) > 2 else ""
    try:
        ensure_env(ROOT)
        create(ROOT, check_service(train_service(ROOT), workspace_folder), local_folder)
    except Refusal as refusal:
        print(f"torchkiln: {refusal}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

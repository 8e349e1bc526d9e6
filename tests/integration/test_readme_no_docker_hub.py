"""The README's "A machine with no Docker Hub and no GPU" section, followed as printed: its code
block runs in bash, line for line, in a fresh copy of the repository (what a clone holds: no
.env, no .venv, no .torchkiln), from `python3 -m venv` to a shell in the running container. Only
the image name changes, where the test's local Debian 12 image has another name than the
README's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from projects import BASE, REPO, clean_environ, copy_repository, require_base_image

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

SECTION = "**A machine with no Docker Hub and no GPU, only a Python index**"
README_IMAGE = "local/debian:bookworm"
TIMEOUT = 2400


def readme_block() -> str:
    """The first bash block after the section's heading, as printed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


def test_the_block_is_what_this_test_runs() -> None:
    block = readme_block()
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines[0].startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert "invoke env --cpu" in lines and lines[-1] == "docker compose exec train zsh"
    assert README_IMAGE in block


def test_followed_verbatim_from_a_fresh_clone_to_a_running_container(tmp_path: Path) -> None:
    require_base_image()
    if shutil.which("python3") is None:
        pytest.skip("no python3 on PATH: the README's first line needs one")
    root = tmp_path / f"readme-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    copy_repository(root)
    assert not any((root / name).exists() for name in (".env", ".venv", ".torchkiln"))
    script = readme_block().replace(README_IMAGE, BASE)
    # What the user types into the shell that the last line opens.
    typed = "id -un; python -c 'import torch; print(\"torch\", torch.__version__)'; exit\n"
    environ = {**clean_environ(), "PATH": os.defpath + ":" + os.environ.get("PATH", "")}
    environ.pop("VIRTUAL_ENV", None)
    try:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=root, env=environ, input=typed, capture_output=True, text=True,
            timeout=TIMEOUT,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        assert "Traceback" not in output and not re.search(r"^ERROR", output, re.M), output[-4000:]
        said = done.stdout.splitlines()
        assert "torch 2.13.0+cpu" in said, done.stdout[-3000:]
        # The summary of `invoke build` suggested what works on a machine without a GPU.
        assert "  nox -s smoke -- --service train --allow-cpu" in said
        assert (root / ".venv" / "bin" / "invoke").is_file()
    finally:
        subprocess.run(
            ["docker", "compose", "down", "--timeout", "1"],
            cwd=root, env=clean_environ(), capture_output=True, timeout=120,
        )  # fmt: skip
        env_file = root / ".env"
        written = env_file.read_text() if env_file.is_file() else ""
        names = re.findall(r"^(?:TRAIN|FULL|NGC)_IMAGE_NAME=(\S+)$", written, re.M)
        for image in names:
            subprocess.run(["docker", "image", "rm", "--force", image.strip("'\"")],
                           capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_the_readme_main_command_on_a_small_disk_names_what_blocks_it_first(
    tmp_path: Path,
) -> None:
    """The README's main line (`invoke env && invoke build --cca 8.6`) here, where the default
    base image cannot be pulled, with less disk than a source build's floor: the first reason
    is the base image, the disk comes after it, its first fix the cheaper BUILD_MODE=wheels and
    the shared cache last."""
    import sys

    root = tmp_path / f"readme-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    copy_repository(root)
    environ = clean_environ()

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=root, env=environ, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    try:
        assert invoke("env").returncode == 0
        free = shutil.disk_usage("/var/lib/docker" if os.path.isdir("/var/lib/docker") else "/")
        # A disk below the source-build floor, as this engine sees it: the floor above it.
        floor = int(free.free / 1024**3) + 30
        env_file = root / ".env"
        env_file.write_text(env_file.read_text() + f"MIN_FREE_DISK_GB={floor}\n")
        done = invoke("build", "--cca", "8.6")
        output = done.stdout + done.stderr
        assert done.returncode != 0 and "Traceback" not in output, output
        said = [line.removeprefix("error: ") for line in done.stderr.splitlines() if line.strip()]
        reasons = [line.strip() for line in said if re.match(r"\s*\d+\. ", line)]
        errors = [line for line in said if line.startswith("the build cannot start here")]
        assert errors, output  # the notes and warnings before it say what was chosen
        assert reasons[0].startswith("1. base images: ") and "cannot be pulled" in reasons[0]
        disk = next(line for line in reasons if ". disk: " in line)
        assert reasons.index(disk) > 0
        assert disk.index("MIN_FREE_DISK_GB") < disk.index("last resort"), disk
        assert "#0 building" not in output
    finally:
        shutil.rmtree(root, ignore_errors=True)

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

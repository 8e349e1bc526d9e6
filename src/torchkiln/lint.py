"""What `nox -s lint` checks beyond ruff: Dockerfiles and each service of each Compose file."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torchkiln import envfile, settings
from torchkiln.compose import COMPOSE_FILE as BASE_COMPOSE
from torchkiln.compose import CPU_COMPOSE_FILE as CPU_COMPOSE


def dockerfiles(root: Path) -> list[str]:
    """List the project's Dockerfiles, relative to the root."""
    return sorted(str(path.relative_to(root)) for path in (root / "docker").glob("*Dockerfile"))


# The README is a landing page that fits on two screens; the rest lives in docs/.
README_MAX_LINES = 200


def readme_problem(root: Path, limit: int = README_MAX_LINES) -> str:
    """Say why README.md is too long for a landing page, '' when it is not."""
    count = len((root / "README.md").read_text(encoding="utf-8").splitlines())
    if count <= limit:
        return ""
    return (
        f"README.md has {count} lines, more than {limit}: move the detail into a page of docs/ "
        f"and link it from the README's 'Where next' list"
    )


def docker_problem() -> str:
    """Say why `docker compose` cannot run here, '' when it can."""
    if not shutil.which("docker"):
        return "no docker client on PATH"
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    return "" if result.returncode == 0 else "`docker compose` (Compose v2) is missing"


@contextmanager
def defaults_env_file() -> Iterator[str]:
    """Yield an env file with every setting at its default, as a fresh `invoke env` gives."""
    values = {setting.name: setting.default for setting in settings.SETTINGS}
    values["CCA"] = "8.6"
    text = envfile.render(values, values, "# every setting at its default, for linting")
    with tempfile.NamedTemporaryFile("w", suffix=".env", delete=False) as handle:
        handle.write(text)
    try:
        yield handle.name
    finally:
        Path(handle.name).unlink(missing_ok=True)


def compose_config_commands(root: Path, env_file: str) -> list[list[str]]:
    """Build one `docker compose config -q` per service, with and without the CPU override."""
    if not (root / BASE_COMPOSE).exists():
        return []
    variants = [[BASE_COMPOSE]]
    if (root / CPU_COMPOSE).exists():
        variants.append([BASE_COMPOSE, CPU_COMPOSE])
    commands = []
    for files in variants:
        file_args = [arg for name in files for arg in ("-f", str(root / name))]
        for service in settings.SERVICES:
            commands.append(
                [
                    "docker",
                    "compose",
                    "--project-directory",
                    str(root),
                    "--env-file",
                    env_file,
                    *file_args,
                    "config",
                    "-q",
                    service,
                ]
            )
    return commands

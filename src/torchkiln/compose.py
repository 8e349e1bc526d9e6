"""Docker Compose and BuildKit command lines, built as lists by pure functions (no processes).

Build args reach Compose by name only (the compose file lists them); their values come from the
process environment or `.env`, so a flag becomes an `env NAME=value` prefix of the command: the
printed command is exactly what runs, and Compose applies the same precedence as the settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from torchkiln import settings
from torchkiln.errors import UserError

# Predefined BuildKit args passed through by every service (not settings: they are the host's).
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
ENV_FILE = ".env"
DOCKERFILES = {
    "train": "docker/Dockerfile",
    "full": "docker/Dockerfile",
    "ngc": "docker/ngc.Dockerfile",
}
# `--source NAME=DIR` names and the Dockerfile stages their checkouts replace.
SOURCE_CONTEXTS = {"pytorch": "pytorch-src", "vision": "vision-src", "audio": "audio-src"}
WHEELHOUSE_CONTEXT = "wheelhouse"
WHEELS_TARGET = "wheels"


def check_service(service: str) -> str:
    """Refuse a service name the compose file does not define."""
    if service not in settings.SERVICES:
        raise UserError(
            f"service '{service}' does not exist; choose one of {', '.join(settings.SERVICES)}"
        )
    return service


def compose_files(value: str) -> list[str]:
    """Split COMPOSE_FILE as Compose does (COMPOSE_PATH_SEPARATOR, ':' by default)."""
    separator = os.environ.get("COMPOSE_PATH_SEPARATOR", os.pathsep)
    return [item for item in value.split(separator) if item]


def parse_sources(items: Iterable[str], cwd: Path) -> dict[str, str]:
    """Turn `--source pytorch=DIR` items into named build contexts {stage: absolute dir}."""
    contexts: dict[str, str] = {}
    for item in items:
        name, sep, directory = item.partition("=")
        if not sep or name not in SOURCE_CONTEXTS or not directory:
            raise UserError(
                f"--source '{item}' is not NAME=DIR with NAME one of "
                f"{', '.join(SOURCE_CONTEXTS)}; write e.g. --source pytorch=../pytorch"
            )
        path = (cwd / directory).resolve()
        if not (path / "setup.py").is_file() and not (path / "pyproject.toml").is_file():
            raise UserError(
                f"--source {name}={directory}: {path} holds no setup.py or pyproject.toml; "
                f"give the root of a {name} checkout (git clone --recursive)"
            )
        contexts[SOURCE_CONTEXTS[name]] = str(path)
    return contexts


def check_wheelhouse(directory: str, cwd: Path) -> str:
    """Refuse a wheelhouse that is not a directory of wheels; return its absolute path."""
    path = (cwd / directory).resolve()
    if not path.is_dir() or not any(path.glob("torch-*.whl")):
        raise UserError(
            f"--wheelhouse {directory}: {path} holds no torch-*.whl; fill it with "
            f"pip download torch==<version> -r docker/requirements.txt -d {directory}"
        )
    return str(path)


def check_ca_bundle(value: str, cwd: Path) -> str:
    """Refuse a CA bundle path that is not a readable file; return it absolute ('' for none)."""
    if not value:
        return ""
    path = (cwd / value).resolve()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UserError(
            f"CA bundle '{value}' is not a readable file; give the PEM bundle your host "
            f"trusts, e.g. --ca-bundle /etc/ssl/certs/ca-certificates.crt"
        )
    return str(path)


def override_text(service: str, contexts: Mapping[str, str]) -> str:
    """Render the Compose override that adds named build contexts (JSON is valid YAML)."""
    document = {"services": {service: {"build": {"additional_contexts": dict(contexts)}}}}
    return json.dumps(document, indent=2) + "\n"


def env_prefix(overrides: Mapping[str, str]) -> list[str]:
    """Prefix a command with `env NAME=value …` for the settings given as flags."""
    if not overrides:
        return []
    return ["env", *(f"{name}={value}" for name, value in sorted(overrides.items()))]


def compose_prefix(files: list[str] | None = None) -> list[str]:
    """Start a Compose command; explicit files replace COMPOSE_FILE and need --env-file .env."""
    if not files:
        return ["docker", "compose"]
    file_args = [arg for name in files for arg in ("-f", name)]
    return ["docker", "compose", "--env-file", ENV_FILE, *file_args]


def build_command(
    service: str,
    overrides: Mapping[str, str],
    *,
    no_cache: bool = False,
    files: list[str] | None = None,
) -> list[str]:
    """Build a service's image through Compose, with plain progress for the summary."""
    return [
        *env_prefix(overrides),
        *compose_prefix(files),
        "--progress",
        "plain",
        "build",
        *(["--no-cache"] if no_cache else []),
        service,
    ]


def up_command(service: str, overrides: Mapping[str, str] | None = None) -> list[str]:
    """Start (or recreate) a service's container in the background."""
    return [*env_prefix(overrides or {}), "docker", "compose", "up", "--detach", service]


def down_command(volumes: bool = False) -> list[str]:
    """Stop and remove the project's containers; volumes only when asked."""
    return ["docker", "compose", "down", *(["--volumes"] if volumes else [])]


def shell_command(service: str) -> list[str]:
    """Open zsh in a running service as the container user."""
    return ["docker", "compose", "exec", service, "zsh"]


def logs_command(service: str, follow: bool = False) -> list[str]:
    """Show a service's logs."""
    return ["docker", "compose", "logs", *(["--follow"] if follow else []), service]


def given_build_args(
    service: str,
    flags: Mapping[str, str],
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
) -> dict[str, str]:
    """Name the build args Compose would pass: those set by flag, environment or .env."""
    values: dict[str, str] = {}
    for name in [*settings.build_args(service), *PROXY_ARGS]:
        for layer in (flags, environ, dotenv):
            value = layer.get(name)
            if value is not None:
                values[name] = value
                break
    return values


def wheels_command(
    service: str,
    build_args: Mapping[str, str],
    contexts: Mapping[str, str],
    ca_bundle: str,
    dest: str,
    *,
    no_cache: bool = False,
) -> list[str]:
    """Export the `wheels` stage with BuildKit's local output (same args as Compose's build)."""
    command = ["docker", "buildx", "build", "--progress", "plain"]
    command += ["--file", DOCKERFILES[service], "--target", WHEELS_TARGET]
    command += ["--output", f"type=local,dest={dest}"]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    for name, directory in sorted(contexts.items()):
        command += ["--build-context", f"{name}={directory}"]
    if ca_bundle:
        command += ["--secret", f"id=ca_bundle,src={ca_bundle}"]
    if no_cache:
        command.append("--no-cache")
    command.append(".")
    return command

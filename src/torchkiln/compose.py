"""Docker Compose and BuildKit command lines, built as lists by pure functions (no processes).

Build args reach Compose by name only (the compose file lists them); their values come from the
process environment or `.env`, so a flag becomes an `env NAME=value` prefix of the command: the
printed command is exactly what runs, and Compose applies the same precedence as the settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
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
SOURCE_CONTEXTS = {
    "pytorch": "pytorch-src",
    "vision": "vision-src",
    "audio": "audio-src",
    "magma": "magma-src",
}
# The files that mark a checkout's root: magma builds with CMake, the others with pip.
SOURCE_MARKERS = {"magma": ("CMakeLists.txt",)}
WHEELHOUSE_CONTEXT = "wheelhouse"
# The build secret holding PIP_INDEX_TOKEN (compose/docker-compose.yaml, docker/scripts/net.sh).
INDEX_TOKEN_SECRET = "pip_index_token"
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
        markers = SOURCE_MARKERS.get(name, ("setup.py", "pyproject.toml"))
        if not any((path / marker).is_file() for marker in markers):
            raise UserError(
                f"--source {name}={directory}: {path} holds no {' or '.join(markers)}; "
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


def override_text(
    service: str,
    contexts: Mapping[str, str],
    *,
    cache_from: Sequence[str] = (),
    cache_to: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> str:
    """Render the Compose override: named contexts, registry cache, extra tags (JSON is YAML)."""
    build: dict[str, object] = {}
    if contexts:
        build["additional_contexts"] = dict(contexts)
    if cache_from:
        build["cache_from"] = list(cache_from)
    if cache_to:
        build["cache_to"] = list(cache_to)
    if tags:
        build["tags"] = list(tags)
    document = {"services": {service: {"build": build}}}
    return json.dumps(document, indent=2) + "\n"


def registry_refs(repository: str, service: str) -> tuple[str, str]:
    """Name a service's image and build-cache references in the REGISTRY_IMAGE repository."""
    return f"{repository}:{service}", f"{repository}:{service}-cache"


def cache_spec(value: str, *, export: bool) -> str:
    """Turn a --cache-from/--cache-to value into a buildx cache spec.

    A plain reference means the registry cache at that reference; exports keep every stage
    (mode=max), so teammates and CI reuse the long build stages, not only the final image's.
    A full spec (type=…) passes through, with mode=max added to a registry export lacking one.
    """
    if not value or value != value.strip() or " " in value:
        raise UserError(
            f"cache '{value}' is not a registry reference or a type=… spec; write e.g. "
            f"registry.example.com/team/torchkiln:train-cache"
        )
    if "type=" not in value:
        if "=" in value or "," in value:
            raise UserError(
                f"cache '{value}' has fields but no type=; write type=registry,ref=REF or a "
                f"plain REF"
            )
        value = f"type=registry,ref={value}"
    fields = dict(item.partition("=")[::2] for item in value.split(","))
    if export and fields.get("type") == "registry" and "mode" not in fields:
        value += ",mode=max"
    return value


def cache_export_problem(inspect_output: str, builder: str) -> str | None:
    """Say why a builder (`docker buildx inspect` output) cannot export cache, or None.

    The docker driver exports cache only with the containerd image store, whose BuildKit
    worker shows containerd labels; other drivers (docker-container, kubernetes, remote) can.
    """
    driver = ""
    for line in inspect_output.splitlines():
        if line.startswith("Driver:"):
            driver = line.split(":", 1)[1].strip()
            break
    if driver != "docker" or "worker.containerd" in inspect_output:
        return None
    name = builder or "the current builder"
    return (
        f"--cache-to: {name} uses the docker driver on the classic image store, which cannot "
        f"export cache; enable the containerd image store (daemon.json: "
        f'"features": {{"containerd-snapshotter": true}}) or create a builder '
        f"(docker buildx create --name kiln --driver docker-container) and pass --builder kiln"
    )


def builder_inspect_command(builder: str) -> list[str]:
    """Describe a buildx builder (the current one when empty): driver, endpoint, labels."""
    return ["docker", "buildx", "inspect", *([builder] if builder else [])]


def push_command(reference: str) -> list[str]:
    """Push an image reference to its registry."""
    return ["docker", "push", reference]


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
    builder: str = "",
) -> list[str]:
    """Build a service's image through Compose, with plain progress for the summary."""
    return [
        *env_prefix(overrides),
        *compose_prefix(files),
        "--progress",
        "plain",
        "build",
        *(["--builder", builder] if builder else []),
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
    builder: str = "",
    cache_from: Sequence[str] = (),
) -> list[str]:
    """Export the `wheels` stage with BuildKit's local output (same args as Compose's build)."""
    command = ["docker", "buildx", "build", "--progress", "plain"]
    if builder:
        command += ["--builder", builder]
    for spec in cache_from:
        command += ["--cache-from", spec]
    command += ["--file", DOCKERFILES[service], "--target", WHEELS_TARGET]
    command += ["--output", f"type=local,dest={dest}"]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    for name, directory in sorted(contexts.items()):
        command += ["--build-context", f"{name}={directory}"]
    if ca_bundle:
        command += ["--secret", f"id=ca_bundle,src={ca_bundle}"]
    # As Compose's `pip_index_token` secret: the variable's value, or empty when it is unset.
    command += ["--secret", f"id={INDEX_TOKEN_SECRET},env={INDEX_TOKEN_SECRET.upper()}"]
    if no_cache:
        command.append("--no-cache")
    command.append(".")
    return command

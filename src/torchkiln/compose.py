"""Docker Compose and BuildKit command lines, built as lists by pure functions (no processes).

`invoke build` hands Compose every build arg of the service, resolved, normalised and checked by
the settings model, in an override file (`.torchkiln/build-<service>.yaml`) that also names the
local sources, the registry cache and the CA bundle: what was checked is exactly what the build
gets, and the printed command runs as printed. The compose file lists the same args by name, so
a plain `docker compose build` takes them from `.env`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchkiln import envfile, sccache, urls

# Predefined BuildKit args passed through by every service (not settings: they are the host's).
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
COMPOSE_FILE = "compose/compose.yaml"
CPU_COMPOSE_FILE = "compose/cpu.yaml"
# invoke build's own files in the checkout: the override of each build, the lock, the record.
STATE_DIR = ".torchkiln"
DOCKERFILES = {
    "train": "docker/Dockerfile",
    "full": "docker/Dockerfile",
    "ngc": "docker/ngc.Dockerfile",
}
# The build secret holding PIP_INDEX_TOKEN (compose/compose.yaml, docker/scripts/net.sh).
INDEX_TOKEN_SECRET = "pip_index_token"
WHEELS_TARGET = "wheels"
# Labels of what a checkout makes: the Compose project (docker/Dockerfile's LABEL) and the
# checkout's own identity (the build override's), which `invoke clean` trusts over the project
# name, since two checkouts may name the same project.
PROJECT_LABEL = "io.torchkiln.project"
CHECKOUT_LABEL = "io.torchkiln.checkout"
# Compose's own labels on the containers it creates.
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_DIR_LABEL = "com.docker.compose.project.working_dir"


def checkout_identity(root: Path) -> str:
    """Name a checkout uniquely on the engine: its folder name and a short hash of its absolute
    path (…/a/proj and …/b/proj differ), valid as a Compose project and an image repository."""
    path = str(root.resolve())
    base = re.sub(r"[^a-z0-9]+", "-", root.resolve().name.lower()).strip("-")[:40] or "torchkiln"
    return f"{base}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def csv_field(text: str) -> str:
    """Quote one field of a BuildKit CSV option (--output, --secret) as encoding/csv reads it:
    a path with a comma or a quote would otherwise be split into other fields."""
    if any(character in text for character in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def display(command: Sequence[str]) -> str:
    """A command as printed: shell-quoted, every URL password masked."""
    return urls.mask_text(shlex.join(command))


def compose_files(value: str) -> list[str]:
    """Split COMPOSE_FILE as Compose does (COMPOSE_PATH_SEPARATOR, ':' by default)."""
    separator = os.environ.get("COMPOSE_PATH_SEPARATOR", os.pathsep)
    return [item for item in value.split(separator) if item]


def index_url(value: str) -> urls.URL:
    """PIP_INDEX_URL, parsed as the settings model checked it."""
    return urls.parse("PIP_INDEX_URL", value, form="https://HOST/simple")


def build_secrets(values: Mapping[str, str], root: Path | None = None) -> dict[str, str]:
    """The environment Compose and buildx read the env-sourced build secrets from: the index
    token (PIP_INDEX_TOKEN, else the password split off PIP_INDEX_URL; net.sh puts it back into
    the URL for pip alone), and sccache's COMPILE_CACHE, BUILD_FARM and BUILD_FARM_TOKEN
    (sccache.secrets; the farm's token is BUILD_FARM_TOKEN, else the one `invoke farm` wrote
    under the checkout `root`)."""
    token = values.get("PIP_INDEX_TOKEN", "")
    if not token and values.get("PIP_INDEX_URL"):
        token = index_url(values["PIP_INDEX_URL"]).password or ""
    farm_token = values.get("BUILD_FARM_TOKEN", "").strip()
    if root is not None:
        farm_token = sccache.farm_token(values, root, STATE_DIR)
    return {"PIP_INDEX_TOKEN": token, **sccache.secrets(values, farm_token)}


def _escaped(value: object) -> object:
    # Compose interpolates ${…} and $NAME in every file it reads, values of any key; '$$' is a
    # literal '$' (a path or a password must reach the build unchanged).
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


def override_text(
    service: str,
    args: Mapping[str, str],
    contexts: Mapping[str, str],
    *,
    ca_bundle: str = "",
    cache_from: Sequence[str] = (),
    cache_to: Sequence[str] = (),
    tags: Sequence[str] = (),
    checkout: str = "",
) -> str:
    """Render the build's Compose override: args, named contexts, cache, tags, and the label
    with the checkout's identity (JSON is YAML)."""
    build: dict[str, object] = {"args": dict(args)}
    if checkout:
        build["labels"] = {CHECKOUT_LABEL: checkout}
    if contexts:
        build["additional_contexts"] = dict(contexts)
    if cache_from:
        build["cache_from"] = list(cache_from)
    if cache_to:
        build["cache_to"] = list(cache_to)
    if tags:
        build["tags"] = list(tags)
    document: dict[str, object] = {"services": {service: {"build": build}}}
    if ca_bundle:
        document["secrets"] = {"ca_bundle": {"file": ca_bundle}}
    return json.dumps(_escaped(document), indent=2) + "\n"


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


def compose_prefix(files: Sequence[str] = ()) -> list[str]:
    """Start a Compose command; explicit files replace COMPOSE_FILE and need --env-file .env."""
    if not files:
        return ["docker", "compose"]
    file_args = [arg for name in files for arg in ("-f", name)]
    return ["docker", "compose", "--env-file", envfile.NAME, *file_args]


def build_command(
    service: str,
    files: Sequence[str],
    *,
    no_cache: bool = False,
    builder: str = "",
) -> list[str]:
    """Build a service's image through Compose, with plain progress for the summary."""
    return [
        *compose_prefix(files),
        "--progress",
        "plain",
        "build",
        *(["--builder", builder] if builder else []),
        *(["--no-cache"] if no_cache else []),
        service,
    ]


def up_command(service: str) -> list[str]:
    """Start (or recreate) a service's container from its built image; never build here."""
    return ["docker", "compose", "up", "--detach", "--no-build", service]


def down_command(volumes: bool = False) -> list[str]:
    """Stop and remove the project's containers; volumes only when asked."""
    return ["docker", "compose", "down", *(["--volumes"] if volumes else [])]


def shell_command(service: str) -> list[str]:
    """Open zsh in a running service as the container user."""
    return ["docker", "compose", "exec", service, "zsh"]


def logs_command(service: str, follow: bool = False) -> list[str]:
    """Show a service's logs."""
    return ["docker", "compose", "logs", *(["--follow"] if follow else []), service]


def no_logs_note(service: str, root: Path) -> str:
    """Say why a service's log is empty, and where the last build's log is."""
    log = Path(STATE_DIR) / f"build-{service}.log"
    where = (
        f"the last invoke build's log is {log}"
        if (root / log).is_file()
        else "no invoke build log is kept here yet"
    )
    return (
        f"{service} has logged nothing: it runs zsh, waiting for docker compose exec {service} "
        f"zsh; {where}"
    )


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
    # --output and --secret are CSV: a path with a comma or a quote is one quoted field.
    command += ["--output", f"type=local,{csv_field(f'dest={dest}')}"]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    for name, directory in sorted(contexts.items()):
        command += ["--build-context", f"{name}={directory}"]
    if ca_bundle:
        command += ["--secret", f"id=ca_bundle,{csv_field(f'src={ca_bundle}')}"]
    # As Compose's `pip_index_token` secret: the variable's value, or empty when it is unset.
    command += ["--secret", f"id={INDEX_TOKEN_SECRET},env={INDEX_TOKEN_SECRET.upper()}"]
    for secret in sccache.SECRET_IDS:  # sccache's cache and farm (sccache.py)
        command += ["--secret", f"id={secret},env={secret.upper()}"]
    if no_cache:
        command.append("--no-cache")
    command.append(".")
    return command

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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from torchkiln import envfile, gpu, sccache, settings, urls
from torchkiln.errors import UserError

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
# `--source NAME=DIR` names and the Dockerfile stages their checkouts replace.
SOURCE_CONTEXTS = {
    "pytorch": "pytorch-src",
    "vision": "vision-src",
    "audio": "audio-src",
    "magma": "magma-src",
}
# The files that make a folder a Python project pip can build.
PYTHON_PROJECT_FILES = ("setup.py", "pyproject.toml")
# What marks each checkout's root: a build file, and the package the project is named for, so a
# checkout of something else is refused in seconds rather than after the build.
SOURCE_MARKERS = {
    "pytorch": (PYTHON_PROJECT_FILES, ("torch/__init__.py",)),
    "vision": (PYTHON_PROJECT_FILES, ("torchvision/__init__.py",)),
    "audio": (PYTHON_PROJECT_FILES, ("src/torchaudio", "torchaudio")),
    "magma": (("CMakeLists.txt",), ("include/magma.h", "include/magma_v2.h")),
}
WHEELHOUSE_CONTEXT = "wheelhouse"
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


def check_path(flag: str, value: str) -> None:
    """Refuse a path no build tool can take: a line break or control character in it."""
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise UserError(
            f"{flag} {value!r} holds a line break or control character, which Compose and "
            f"BuildKit cannot take; rename the folder"
        )


def csv_field(text: str) -> str:
    """Quote one field of a BuildKit CSV option (--output, --secret) as encoding/csv reads it:
    a path with a comma or a quote would otherwise be split into other fields."""
    if any(character in text for character in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def display(command: Sequence[str]) -> str:
    """A command as printed: shell-quoted, every URL password masked."""
    return urls.mask_text(shlex.join(command))


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
        check_path("--source", item)
        if not sep or name not in SOURCE_CONTEXTS or not directory:
            raise UserError(
                f"--source '{item}' is not NAME=DIR with NAME one of "
                f"{', '.join(SOURCE_CONTEXTS)}; write e.g. --source pytorch=../pytorch"
            )
        path = (cwd / directory).resolve()
        for markers in SOURCE_MARKERS[name]:
            if any((path / marker).exists() for marker in markers):
                continue
            raise UserError(
                f"--source {name}={directory}: {path} holds no {' or '.join(markers)}; "
                f"give the root of a {name} checkout (git clone --recursive)"
            )
        contexts[SOURCE_CONTEXTS[name]] = str(path)
    return contexts


# `--extension DIR` folders replace these empty stages (docker/Dockerfile), at most this many.
EXTENSION_CONTEXTS = ("extension-src-0", "extension-src-1", "extension-src-2", "extension-src-3")
_EXTENSION_SPEC = re.compile(settings.EXTENSION_SPEC)


def split_extensions(
    items: Iterable[str], cwd: Path, checkout: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """Split `--extension` items into index specs (name==version) and local source folders,
    returned as named build contexts; refuse anything else (an empty item, a spec that is not
    one pinned release, the checkout itself, a folder twice), and more folders than stages."""
    specs: list[str] = []
    folders: list[Path] = []
    for item in items:
        check_path("--extension", item)
        if not item.strip():
            raise UserError(
                "--extension '' is empty; give a source distribution as name==version (e.g. "
                "torch-scatter==2.1.2) or the folder of an extension's source"
            )
        path = (cwd / item).resolve()
        if _EXTENSION_SPEC.fullmatch(item):
            specs.append(item)
        elif path.is_dir():
            if checkout is not None and path == checkout.resolve():
                raise UserError(
                    f"--extension {item} is this torchkiln checkout itself; give the folder of "
                    f"the extension's source (its setup.py or pyproject.toml)"
                )
            if not any((path / marker).is_file() for marker in PYTHON_PROJECT_FILES):
                raise UserError(
                    f"--extension {item}: {path} holds no setup.py or pyproject.toml; give the "
                    f"root of the extension's source"
                )
            if path in folders:
                raise UserError(f"--extension {item}: {path} is given twice; give it once")
            folders.append(path)
        elif re.search(r"[=<>~!,;\s]", item.strip()):
            raise UserError(
                f"--extension '{item}' is not one pinned release name==version; write one item "
                f"per --extension, e.g. --extension torch-scatter==2.1.2"
            )
        else:
            raise UserError(
                f"--extension '{item}' is neither name==version (a source distribution on the "
                f"index, e.g. torch-scatter==2.1.2) nor a folder; write one of those"
            )
    if len(folders) > len(EXTENSION_CONTEXTS):
        raise UserError(
            f"--extension: {len(folders)} local folders, at most {len(EXTENSION_CONTEXTS)}; "
            f"publish the others as source distributions (name==version) or merge them"
        )
    named = zip(EXTENSION_CONTEXTS, folders, strict=False)  # fewer folders than stages
    return specs, {name: str(path) for name, path in named}


def check_wheelhouse(directory: str, cwd: Path) -> str:
    """Refuse a wheelhouse that is not a directory of wheels; return its absolute path."""
    check_path("--wheelhouse", directory)
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
    check_path("CA bundle", value)
    path = (cwd / value).resolve()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UserError(
            f"CA bundle '{value}' is not a readable file; give the PEM bundle your host "
            f"trusts, e.g. --ca-bundle /etc/ssl/certs/ca-certificates.crt"
        )
    return str(path)


def service_values(service: str, values: Mapping[str, str]) -> dict[str, str]:
    """The settings as a service's image really gets them, ${NAME} references expanded.

    A setting the service is not given keeps its default (train always builds the default
    CUDA_VERSION, distro and so on, whatever .env says for full).
    """
    mine = {
        setting.name: values[setting.name]
        if service in setting.services or not setting.services
        else setting.default
        for setting in settings.SETTINGS
    }
    return settings.effective(mine)


def build_arg_values(
    service: str, values: Mapping[str, str], local_extensions: int = 0
) -> dict[str, str]:
    """Every build arg of a service with the value the checks saw, plus the derived ones: the
    CCA's arch lists, and whether there are extensions to build."""
    mine = service_values(service, values)
    args = {name: mine[name] for name in settings.build_args(service)}
    if args.get("PIP_INDEX_URL"):
        # Its password travels as the secret pip_index_token (build_secrets), never as an arg.
        args["PIP_INDEX_URL"] = index_url(args["PIP_INDEX_URL"]).without_password().text()
    if "CCA" in args:
        # A CPU image (CUDA_FROM=none) compiles no GPU code: no arch lists, whatever CCA says.
        args.update(gpu.cca_build_args(args["CCA"] if args["CUDA_FROM"] != "none" else ""))
        args["BUILD_EXTENSIONS"] = "1" if args["EXTENSIONS"] or local_extensions else "0"
        args.update(compile_args(args))
    return args


def compile_args(args: Mapping[str, str]) -> dict[str, str]:
    """COMPILED: whether anything is compiled (then the closure and the repair stages run);
    PARALLEL_STAGES: the compile stages BuildKit runs at once after torch, which share MAX_JOBS."""
    extensions = args["BUILD_EXTENSIONS"] == "1"
    compiles_torch_family = args["BUILD_MODE"] != "wheels"
    stages = extensions + compiles_torch_family * (
        bool(args["TORCHVISION_VERSION"]) + bool(args["TORCHAUDIO_VERSION"])
    )
    return {
        "COMPILED": "1" if compiles_torch_family or extensions else "0",
        "PARALLEL_STAGES": str(max(1, stages)),
    }


def index_url(value: str) -> urls.URL:
    """PIP_INDEX_URL, parsed as the settings model checked it."""
    return urls.parse("PIP_INDEX_URL", value, form="https://HOST/simple")


def build_secrets(values: Mapping[str, str], farm_token: str = "") -> dict[str, str]:
    """The environment Compose and buildx read the env-sourced build secrets from: the index
    token (PIP_INDEX_TOKEN, else the password split off PIP_INDEX_URL; net.sh puts it back into
    the URL for pip alone), and sccache's COMPILE_CACHE, BUILD_FARM and BUILD_FARM_TOKEN
    (sccache.secrets)."""
    token = values.get("PIP_INDEX_TOKEN", "")
    if not token and values.get("PIP_INDEX_URL"):
        token = index_url(values["PIP_INDEX_URL"]).password or ""
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

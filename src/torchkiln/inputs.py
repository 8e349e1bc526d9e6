"""A build's inputs: what the user gave, checked once, as the one value a plan is made from.

The flags of `invoke build` and `invoke wheels`, the settings layers (flag > environment >
`.env` > default), and every path handed over (`--source`, `--extension`, `--wheelhouse`, the CA
bundle) and the service are checked here, in seconds, before anything runs; `gather` returns them
as `BuildInputs`, from which `buildplan` decides the commands.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torchkiln import compose, envfile, extensions, gpu, settings
from torchkiln.errors import UserError


@dataclass
class BuildOptions:
    """What `invoke build` and `invoke wheels` were asked for on the command line."""

    service: str = "train"
    cca: str | None = None
    torch: str | None = None
    build_mode: str | None = None
    cuda_from: str | None = None
    sources: list[str] = field(default_factory=list)
    extensions: list[str] = field(default_factory=list)
    wheelhouse: str | None = None
    ca_bundle: str | None = None
    no_cache: bool = False
    up: bool = True
    builder: str | None = None
    cache_from: str | bool | None = None
    cache_to: str | bool | None = None
    push: bool = False

    # The inputs that decide what the build stages compile: `invoke wheels` reuses a build's.
    INPUTS = (
        *("cca", "torch", "build_mode", "cuda_from"),
        *("sources", "extensions", "wheelhouse", "ca_bundle"),
    )

    @classmethod
    def from_flags(cls, flags: Mapping[str, object]) -> BuildOptions:
        """Make options from a task's parameters (`--source` is repeatable, `--no-up` negates)."""
        known = {name: flags[name] for name in cls.__dataclass_fields__ if name in flags}
        known["sources"] = list(flags.get("source") or [])
        known["extensions"] = list(flags.get("extension") or [])
        if "no_up" in flags:
            known["up"] = not flags["no_up"]
        return cls(**known)

    def inputs(self) -> dict[str, object]:
        """The options that decide the build's stages, for the record."""
        return {name: value for name, value in asdict(self).items() if name in self.INPUTS}


@dataclass
class BuildInputs:
    """A build's inputs, every one checked: the one value `buildplan.make` decides from."""

    root: Path
    options: BuildOptions
    # Every setting, resolved through the layers and checked.
    values: dict[str, str]
    # Named build contexts: --source checkouts, the --wheelhouse, --extension folders.
    contexts: dict[str, str]
    # How many of the contexts are --extension folders.
    extension_folders: int
    # The CA bundle's absolute path ('' for none).
    ca_bundle: str
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[str] = field(default_factory=list)
    push_ref: str = ""
    # Lines said before the build (how --extension and EXTENSIONS were joined).
    notes: list[str] = field(default_factory=list)

    @property
    def service(self) -> str:
        """The Compose service to build."""
        return self.options.service


def gather(
    root: Path,
    options: BuildOptions,
    *,
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
    cwd: Path | None = None,
) -> BuildInputs:
    """Resolve and check every input of a build; runs nothing."""
    cwd = cwd or Path.cwd()
    service = check_service(options.service)
    specs, extension_contexts = split_extensions(options.extensions, cwd, root)
    specs, notes = extensions.merge_specs(
        specs,
        settings.layered(environ, dotenv).get("EXTENSIONS"),
        "the environment" if "EXTENSIONS" in environ else ".env",
    )
    flags = settings_flags(options, environ, dotenv, specs)
    values = settings.resolve(flags, environ, dotenv)
    extensions.check_unique(values["EXTENSIONS"].split(), extension_contexts)
    validate(service, values, bool(values["EXTENSIONS"] or extension_contexts))
    cache_imports, cache_exports, push_ref = registry_plan(
        service, values["REGISTRY_IMAGE"], options.cache_from, options.cache_to, options.push
    )
    contexts: dict[str, str] = dict(extension_contexts)
    if options.sources or options.wheelhouse or options.extensions:
        if service not in settings.SOURCE:
            raise UserError(
                f"--source/--wheelhouse/--extension apply to the train and full services, not "
                f"'{service}'"
            )
        contexts.update(parse_sources(options.sources, cwd))
        if options.wheelhouse:
            contexts[WHEELHOUSE_CONTEXT] = check_wheelhouse(options.wheelhouse, cwd)
    # A --ca-bundle path is relative to where you are; one in .env to the repository.
    bundle = check_ca_bundle(values["CA_BUNDLE"], cwd if options.ca_bundle is not None else root)
    return BuildInputs(
        root=root,
        options=options,
        values=values,
        contexts=contexts,
        extension_folders=len(extension_contexts),
        ca_bundle=bundle,
        cache_from=cache_imports,
        cache_to=cache_exports,
        push_ref=push_ref,
        notes=notes if options.extensions else [],
    )


def read_dotenv(root: Path) -> dict[str, str | None]:
    """Read the repository's .env, which `invoke build` needs (Compose reads it too)."""
    file = envfile.path(root)
    if not file.exists() and not file.is_symlink():
        raise UserError(f"{file} does not exist; run invoke env first (it writes UID, GID, CCA …)")
    values = envfile.read(file)
    if not values:
        raise UserError(
            f"{file} sets nothing; run invoke env --force to write it from this host's facts"
        )
    for note in envfile.unknown_names(values):
        print(f"warning: {file.name}: {note}", file=sys.stderr)
    return values


def with_recorded_inputs(root: Path, given: BuildOptions) -> tuple[BuildOptions, str]:
    """Fill the inputs `invoke wheels` was not given from the last build of the service, so
    the export reproduces that build's stages (and reuses its cache); say which were taken."""
    record = root / compose.STATE_DIR / f"build-{given.service}.json"
    try:
        inputs = json.loads(record.read_text(encoding="utf-8"))["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return given, ""
    if not isinstance(inputs, dict):  # a damaged record is no record
        return given, ""
    taken: dict[str, object] = {}
    for name in BuildOptions.INPUTS:
        mine, theirs = getattr(given, name), inputs.get(name)
        # What the record holds as a flag would: a text, or texts (--source, --extension).
        readable = isinstance(theirs, str) or (
            isinstance(theirs, list) and all(isinstance(item, str) for item in theirs)
        )
        if (mine is None or mine == []) and readable and theirs not in ("", []):
            taken[name] = theirs
    if not taken:
        return given, ""
    options = replace(given, **taken)
    flags = [
        f"--{name.replace('_', '-').removesuffix('s')} {item}"
        for name, value in taken.items()
        for item in (value if isinstance(value, list) else [value])
    ]
    shown = ", ".join(flags)
    return options, f"as the last invoke build --service {given.service}: {shown}"


def settings_flags(
    options: BuildOptions,
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
    extension_specs: list[str] | None = None,
) -> dict[str, str]:
    """Turn the task's flags into settings; --torch picks torchvision unless one is set, and
    --extension items from the index, joined to the configured ones (extensions.merge_specs),
    become EXTENSIONS."""
    flags: dict[str, str] = {}
    if options.extensions:
        flags["EXTENSIONS"] = " ".join(extension_specs or [])
    if options.cca is not None:
        flags["CCA"] = options.cca
    if options.torch is not None:
        flags["PYTORCH_VERSION"] = options.torch
        if "TORCHVISION_VERSION" not in settings.layered(environ, dotenv):
            flags["TORCHVISION_VERSION"] = gpu.matching_torchvision(options.torch)
    if options.build_mode is not None:
        flags["BUILD_MODE"] = options.build_mode
    if options.cuda_from is not None:
        flags["CUDA_FROM"] = options.cuda_from
    if options.ca_bundle is not None:
        flags["CA_BUNDLE"] = options.ca_bundle
    if options.builder is not None:
        flags["BUILDX_BUILDER"] = options.builder
    return flags


def validate(service: str, values: Mapping[str, str], extensions: bool = False) -> None:
    """Refuse, in seconds, what would fail hours into the build."""
    if service not in settings.SOURCE:
        return
    mine = settings.service_values(service, values)
    gpu.resolve_versions(
        mine["PYTORCH_VERSION"], mine["TORCHVISION_VERSION"], mine["TORCHAUDIO_VERSION"]
    )
    cuda_from, mode, cuda = mine["CUDA_FROM"], mine["BUILD_MODE"], mine["CUDA_VERSION"]
    problem = gpu.pypi_cuda_problem(cuda) if cuda_from == "pypi" else ""
    if problem:
        raise UserError(f"{problem}; use CUDA_FROM=image for CUDA 12")
    if cuda_from == "none" or (mode == "wheels" and not extensions):
        return
    for item in gpu.check_cca_for_cuda(mine["CCA"], cuda):
        problem = gpu.cpp_extension_problem(item)
        if problem:
            raise UserError(problem)


def check_service(service: str) -> str:
    """Refuse a service name the compose file does not define."""
    if service not in settings.SERVICES:
        raise UserError(
            f"service '{service}' does not exist; choose one of {', '.join(settings.SERVICES)}"
        )
    return service


def check_path(flag: str, value: str) -> None:
    """Refuse a path no build tool can take: a line break or control character in it."""
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise UserError(
            f"{flag} {value!r} holds a line break or control character, which Compose and "
            f"BuildKit cannot take; rename the folder"
        )


# The files that make a folder a Python project pip can build.
PYTHON_PROJECT_FILES = ("setup.py", "pyproject.toml")

# `--source NAME=DIR` names and the Dockerfile stages their checkouts replace.
SOURCE_CONTEXTS = {
    "pytorch": "pytorch-src",
    "vision": "vision-src",
    "audio": "audio-src",
    "magma": "magma-src",
}

# What marks each checkout's root: a build file, and the package the project is named for, so a
# checkout of something else is refused in seconds rather than after the build.
SOURCE_MARKERS = {
    "pytorch": (PYTHON_PROJECT_FILES, ("torch/__init__.py",)),
    "vision": (PYTHON_PROJECT_FILES, ("torchvision/__init__.py",)),
    "audio": (PYTHON_PROJECT_FILES, ("src/torchaudio", "torchaudio")),
    "magma": (("CMakeLists.txt",), ("include/magma.h", "include/magma_v2.h")),
}

WHEELHOUSE_CONTEXT = "wheelhouse"


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
    stages = extensions.EXTENSION_CONTEXTS
    if len(folders) > len(stages):
        raise UserError(
            f"--extension: {len(folders)} local folders, at most {len(stages)}; "
            f"publish the others as source distributions (name==version) or merge them"
        )
    named = zip(stages, folders, strict=False)  # fewer folders than stages
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


def registry_plan(
    service: str,
    repository: str,
    cache_from: str | bool | None,
    cache_to: str | bool | None,
    push: bool,
) -> tuple[list[str], list[str], str]:
    """Decide the cache imports, cache exports and push reference of a build, or refuse.

    A bare --cache-from/--cache-to (True) means REGISTRY_IMAGE's `:<service>-cache`; --push
    pushes to REGISTRY_IMAGE's `:<service>`.
    """
    image_ref, cache_ref = registry_refs(repository, service) if repository else ("", "")

    def spec(flag: str, value: str | bool | None, export: bool) -> list[str]:
        if value is None or value is False:
            return []
        if value is True:
            if not repository:
                raise UserError(
                    f"{flag} without a value uses REGISTRY_IMAGE, which is empty; set "
                    f"REGISTRY_IMAGE=registry.example.com/team/torchkiln in .env, or give "
                    f"{flag} REF"
                )
            value = cache_ref
        return [cache_spec(value, export=export)]

    imports = spec("--cache-from", cache_from, export=False)
    exports = spec("--cache-to", cache_to, export=True)
    if push and not repository:
        raise UserError(
            "--push needs REGISTRY_IMAGE, the registry repository to push to; set "
            "REGISTRY_IMAGE=registry.example.com/team/torchkiln in .env or the environment"
        )
    return imports, exports, image_ref if push else ""


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

"""Preflight checks: each a pure function of gathered facts, giving ok / warn / error and a fix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from torchkiln import gpu, settings
from torchkiln.engine import EngineFacts
from torchkiln.errors import UserError

MIN_ENGINE = (23, 0)
# compose/cpu.yaml's `!reset` needs Compose 2.24.4; environment-sourced build secrets 2.23.
MIN_COMPOSE = (2, 24, 4)
# Free GB at the engine's root below which a build is refused / warned about, per BUILD_MODE:
# a source build of torch + vision with its ccache takes about 40 GB, official wheels about 10.
DISK_GB = {"source": (40, 60), "torch-wheel": (20, 30), "wheels": (10, 20)}
GB = 1024**3


@dataclass(frozen=True)
class Row:
    """One line of the doctor's table."""

    check: str
    status: str  # ok | warn | error
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class EnvState:
    """What became of reading and validating `.env`."""

    present: bool
    values: Mapping[str, str] | None  # resolved settings; None when they could not be resolved
    problem: str = ""
    warnings: tuple[str, ...] = ()  # names .env sets that no setting has


def check_engine(facts: EngineFacts) -> list[Row]:
    """Judge the engine, Compose and buildx."""
    if facts.error:
        return [
            Row(
                "engine",
                "error",
                f"Docker engine unreachable: {facts.error}",
                "start it (sudo systemctl start docker), or set DOCKER_HOST; "
                "add yourself to the docker group (sudo usermod -aG docker $USER)",
            )
        ]
    rows = []
    version = _version_or_zero(facts.server_version)
    if version[:2] < MIN_ENGINE:
        rows.append(
            Row(
                "engine",
                "error",
                f"Docker Engine {facts.server_version} is too old",
                "install Docker Engine 23 or newer (docs.docker.com/engine/install)",
            )
        )
    else:
        rows.append(Row("engine", "ok", f"Docker Engine {facts.server_version}"))
    compose = _version_or_zero(facts.compose_version) if facts.compose_version else (0,)
    floor = ".".join(map(str, MIN_COMPOSE))
    if compose >= MIN_COMPOSE:
        rows.append(Row("compose", "ok", f"Compose {facts.compose_version}"))
    elif facts.compose_version:
        rows.append(
            Row(
                "compose",
                "error",
                f"Compose {facts.compose_version} is older than {floor}",
                f"update the Compose v2 plugin (package docker-compose-plugin) to {floor} or newer",
            )
        )
    elif facts.compose_v1:
        rows.append(
            Row(
                "compose",
                "error",
                f"only Compose v1 (docker-compose {facts.compose_v1}) is installed",
                "install the Compose v2 plugin (package docker-compose-plugin)",
            )
        )
    else:
        rows.append(
            Row(
                "compose",
                "error",
                "`docker compose` (Compose v2) is missing",
                "install the Compose v2 plugin (package docker-compose-plugin)",
            )
        )
    if facts.buildx_version:
        rows.append(Row("buildx", "ok", f"buildx {facts.buildx_version} (BuildKit)"))
    else:
        rows.append(
            Row(
                "buildx",
                "error",
                "`docker buildx` is missing",
                "install the buildx plugin (package docker-buildx-plugin)",
            )
        )
    return rows


def check_gpu_runtime(facts: EngineFacts, env: EnvState) -> Row:
    """Judge whether containers can get GPUs; a deliberate CPU setup only warns."""
    if facts.error:
        return Row("nvidia runtime", "warn", "not checked: the engine is unreachable")
    if facts.nvidia:
        how = "runtime" if "nvidia" in facts.runtimes else "CDI"
        return Row("nvidia runtime", "ok", f"GPUs reach containers through the NVIDIA {how}")
    cpu_only = env.values is not None and "cpu.yaml" in env.values.get("COMPOSE_FILE", "")
    fix = (
        "install the NVIDIA Container Toolkit and run sudo nvidia-ctk runtime configure "
        "--runtime=docker, then restart Docker; or, to run on the CPU, invoke env --force "
        "(it adds compose/cpu.yaml to COMPOSE_FILE)"
    )
    if cpu_only:
        return Row(
            "nvidia runtime",
            "warn",
            "no NVIDIA runtime or CDI device; COMPOSE_FILE has cpu.yaml: CPU only",
            fix,
        )
    return Row(
        "nvidia runtime",
        "error",
        "no NVIDIA runtime or CDI device: containers would run on the CPU",
        fix,
    )


def check_driver(driver: str, env: EnvState) -> Row:
    """Judge whether the host driver is new enough for the image's CUDA."""
    if env.values is None:
        return Row("driver", "warn", "not checked: the settings could not be read")
    cuda = env.values["CUDA_VERSION"]
    if env.values.get("CUDA_FROM") == "none":
        return Row("driver", "ok", "CUDA_FROM=none: a CPU image needs no driver")
    try:
        minimum = gpu.min_driver_for_cuda(cuda)
    except UserError as error:
        return Row("driver", "error", str(error), "set CUDA_VERSION in .env")
    if not driver:
        return Row(
            "driver",
            "warn",
            f"no NVIDIA driver answered (nvidia-smi); CUDA {cuda} needs {minimum} or newer",
            "install the NVIDIA driver to use GPUs",
        )
    if gpu.driver_supports_cuda(driver, cuda):
        return Row("driver", "ok", f"driver {driver} runs CUDA {cuda} (needs {minimum})")
    return Row(
        "driver",
        "error",
        f"driver {driver} is older than {minimum}, which CUDA {cuda} needs",
        f"upgrade the driver to {minimum} or newer, or set CUDA_VERSION to an "
        "older CUDA in .env and build the full service",
    )


def check_cca(env: EnvState) -> Row:
    """Judge CCA against the CUDA version the image compiles with."""
    if env.values is None:
        return Row("cca", "warn", "not checked: the settings could not be read")
    if env.values.get("CUDA_FROM") == "none":
        return Row("cca", "ok", "CUDA_FROM=none: a CPU image compiles no GPU code")
    if env.values["BUILD_MODE"] == "wheels":
        return Row("cca", "ok", "BUILD_MODE=wheels: official wheels cover all GPUs")
    cca, cuda = env.values["CCA"], env.values["CUDA_VERSION"]
    if not cca:
        return Row(
            "cca",
            "error",
            "CCA is empty and no GPU was detected",
            "pass --cca 8.6 (your GPU's compute capability) or set CCA in .env",
        )
    try:
        items = gpu.check_cca_for_cuda(cca, cuda)
    except UserError as error:
        return Row("cca", "error", str(error), "set CCA in .env or pass --cca")
    return Row("cca", "ok", f"{';'.join(map(str, items))} builds with CUDA {cuda}")


def check_disk(facts: EngineFacts, build_mode: str = "source", floor: str = "") -> Row:
    """Judge free disk at the engine's root for a build of BUILD_MODE (or MIN_FREE_DISK_GB)."""
    needed, comfortable = DISK_GB.get(build_mode, DISK_GB["source"])
    if floor:
        needed = comfortable = int(floor)
    if facts.error:
        return Row("disk", "warn", "not checked: the engine is unreachable")
    if facts.free_bytes is None:
        return Row(
            "disk",
            "warn",
            f"cannot measure free space at {facts.root_dir or '?'} (remote engine?)",
            f"make sure {comfortable} GB are free there",
        )
    free_gb = facts.free_bytes / GB
    detail = f"{free_gb:.0f} GB free at {facts.root_dir}"
    fix = (
        "free space: invoke clean removes this project's images and, with --cache, its build cache"
    )
    if free_gb < comfortable:
        status = "error" if free_gb < needed else "warn"
        return Row("disk", status, f"{detail}; a {build_mode} build needs about {needed} GB", fix)
    return Row("disk", "ok", detail)


def check_env(env: EnvState) -> Row:
    """Judge whether .env exists and holds valid settings, and name keys no setting has."""
    if not env.present:
        return Row(".env", "error", ".env is missing", "run invoke env")
    if env.problem:
        return Row(".env", "error", env.problem, "fix it, or run invoke env --force")
    if env.warnings:
        return Row(".env", "warn", "; ".join(env.warnings), "rename or remove those lines in .env")
    return Row(".env", "ok", "present and valid")


def disk_settings(values: Mapping[str, str] | None) -> tuple[str, str]:
    """BUILD_MODE and MIN_FREE_DISK_GB for the disk check (defaults when unreadable)."""
    if values is None:
        return "source", ""
    return values["BUILD_MODE"], values.get("MIN_FREE_DISK_GB", "")


def cuda_variants(env: EnvState) -> list[tuple[str, EnvState]]:
    """The settings as each service builds them: train always uses the default CUDA_VERSION."""
    if env.values is None:
        return [("", env)]
    default = settings.BY_NAME["CUDA_VERSION"].default
    if env.values["CUDA_VERSION"] == default:
        return [("", env)]
    train = replace(env, values={**env.values, "CUDA_VERSION": default})
    return [("", train), (" (full)", env)]


def check_cuda_source(env: EnvState) -> Row:
    """Say where the image's CUDA comes from, and refuse what that route cannot give."""
    if env.values is None:
        return Row("cuda", "warn", "not checked: the settings could not be read")
    route, cuda = env.values["CUDA_FROM"], env.values["CUDA_VERSION"]
    if route == "none":
        return Row("cuda", "ok", f"none: a CPU image (BUILD_MODE={env.values['BUILD_MODE']})")
    if route == "image":
        return Row("cuda", "ok", f"CUDA {cuda} from the base image (nvidia/cuda devel)")
    problem = gpu.pypi_cuda_problem(cuda)
    if problem:
        fix = "set CUDA_VERSION to 13.0.2 or newer, or CUDA_FROM=image for CUDA 12"
        return Row("cuda", "error", problem, fix)
    return Row("cuda", "ok", f"CUDA {cuda} from NVIDIA's wheels on the Python index (pypi)")


def check_ccache_remote(url: str, problem: str) -> Row | None:
    """Judge the team's compile cache (None when CCACHE_REMOTE is unset): a server that does not
    answer only warns, since the build then compiles with the local cache."""
    if not url:
        return None
    mode = "read-only" if "|read-only" in url else "read-write"
    if problem:
        return Row(
            "compile cache",
            "warn",
            f"CCACHE_REMOTE ({mode}): {problem}; builds go on with the local cache only",
            "start the server (docker compose --profile cache up -d ccache), or check the "
            "address: build steps reach it through the host's address (e.g. the docker0 "
            "bridge's), never 127.0.0.1",
        )
    return Row("compile cache", "ok", f"CCACHE_REMOTE answers ({mode})")


def diagnose(
    facts: EngineFacts,
    driver: str,
    env: EnvState,
    images: Row | None = None,
    cache: Row | None = None,
) -> list[Row]:
    """Run every check over the gathered facts."""
    gpu_rows = [
        replace(row, check=row.check + label)
        for label, variant in cuda_variants(env)
        for row in (check_driver(driver, variant), check_cca(variant))
    ]
    return [
        *check_engine(facts),
        check_gpu_runtime(facts, env),
        check_cuda_source(env),
        *gpu_rows,
        *([images] if images else []),
        *([cache] if cache else []),
        check_disk(facts, *disk_settings(env.values)),
        check_env(env),
    ]


def failed(rows: list[Row]) -> bool:
    """Tell whether any row is an error."""
    return any(row.status == "error" for row in rows)


def render(rows: list[Row]) -> str:
    """Lay the rows out as a plain-text table with a fix under each failure."""
    width = max(len(row.check) for row in rows)
    lines = []
    for row in rows:
        mark = {"ok": "ok   ", "warn": "WARN ", "error": "ERROR"}[row.status]
        lines.append(f"{row.check:<{width}}  {mark}  {row.detail}")
        if row.fix and row.status != "ok":
            lines.append(f"{'':<{width}}         fix: {row.fix}")
    return "\n".join(lines)


def _version_or_zero(text: str) -> tuple[int, ...]:
    try:
        return gpu.version_tuple(text)
    except ValueError:
        return (0,)


def env_state(
    dotenv: Mapping[str, str | None] | None, environ: Mapping[str, str], problem: str = ""
) -> EnvState:
    """Resolve settings from a read .env (None when absent) into an EnvState."""
    from torchkiln import envfile

    if problem:
        return EnvState(present=True, values=None, problem=problem)
    if dotenv is not None and not dotenv:
        return EnvState(present=True, values=None, problem=".env sets nothing")
    try:
        values = settings.resolve({}, environ, dotenv or {})
    except UserError as error:
        return EnvState(present=dotenv is not None, values=None, problem=str(error))
    warnings = tuple(envfile.unknown_names(dotenv or {}))
    return EnvState(present=dotenv is not None, values=values, warnings=warnings)


def check_host(root: Path) -> tuple[str, bool]:
    """Gather the host's and engine's facts, check them; return the table and whether it failed."""
    import os

    from torchkiln import engine, envfile, hostfacts

    facts = engine.engine_info()
    if not facts.error:
        engine.plugin_versions(facts)
    file = envfile.path(root)
    try:
        dotenv = envfile.read(file) if file.exists() or file.is_symlink() else None
        state = env_state(dotenv, os.environ)
    except UserError as error:
        state = env_state(None, os.environ, problem=str(error))
    images = None
    if not facts.error and state.values is not None:
        from torchkiln import compose

        mine = compose.service_values("train", state.values)
        problems = {image: engine.image_reachable(image) for image in base_images("train", mine)}
        images = check_base_images("train", mine, problems)
    cache = None
    if state.values is not None:
        url = state.values["CCACHE_REMOTE"]
        cache = check_ccache_remote(url, hostfacts.cache_server_problem(url))
    rows = diagnose(facts, hostfacts.gpu_driver_version(), state, images, cache)
    return render(rows), failed(rows)


# The settings that name each service's base images.
BASE_IMAGE_SETTINGS = {
    "train": ("BUILD_IMAGE", "TRAIN_IMAGE"),
    "full": ("BUILD_IMAGE", "TRAIN_IMAGE"),
    "ngc": ("NGC_IMAGE",),
}


def base_images(service: str, values: Mapping[str, str]) -> dict[str, str]:
    """The base images a service's build pulls, each with the setting that names it."""
    found: dict[str, str] = {}
    for name in BASE_IMAGE_SETTINGS[service]:
        found.setdefault(values[name], name)
    return found


def check_base_images(service: str, values: Mapping[str, str], problems: Mapping[str, str]) -> Row:
    """Judge whether each base image is here or resolvable; say what replaces a missing one."""
    images = base_images(service, values)
    missing = [(image, problems[image]) for image in images if problems.get(image)]
    if not missing:
        return Row("base images", "ok", ", ".join(images))
    image, reason = missing[0]
    setting = images[image]
    routes = [f"set {setting} to a copy you can reach (a registry mirror, or an image you load)"]
    if service != "ngc":
        routes.append(
            "or build on any apt-based image you have (BUILD_IMAGE=TRAIN_IMAGE=debian:12, "
            "ubuntu:24.04, …) with CUDA_FROM=pypi (CUDA from the Python index) or "
            "CUDA_FROM=none (CPU only), and --wheelhouse DIR when no index is reachable"
        )
    return Row(
        "base images",
        "error",
        f"base image {image} ({setting}) is not here and cannot be pulled: {reason} (a Docker "
        f"Hub rate limit looks the same: docker login)",
        "; ".join(routes),
    )


def build_blockers(
    facts: EngineFacts,
    driver: str,
    values: Mapping[str, str],
    up: bool,
    images: Row | None = None,
) -> list[Row]:
    """The doctor rows that must pass before a build starts (GPU rows only when it will run)."""
    env = EnvState(present=True, values=values)
    rows = [*check_engine(facts), check_disk(facts, *disk_settings(values))]
    if images is not None:
        rows.append(images)
    if up:
        rows.append(check_gpu_runtime(facts, env))
        if driver:  # no driver here: the image may be meant for another machine
            rows.append(check_driver(driver, env))
    return [row for row in rows if row.status == "error"]


def require_ready(values: Mapping[str, str], up: bool, service: str = "") -> EngineFacts:
    """Refuse, in seconds and before any build step, what would make the build or start fail;
    give the engine's facts read on the way (cores and memory for the build's estimate)."""
    from torchkiln import engine, hostfacts

    facts = engine.engine_info()
    images = None
    if not facts.error:
        engine.plugin_versions(facts)
        if service:
            problems = {
                image: engine.image_reachable(image) for image in base_images(service, values)
            }
            images = check_base_images(service, values, problems)
    blockers = build_blockers(facts, hostfacts.gpu_driver_version(), values, up, images)
    if blockers:
        row = blockers[0]
        raise UserError(f"{row.check}: {row.detail}; fix: {row.fix}")
    return facts

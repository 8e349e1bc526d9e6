"""Preflight checks: each a pure function of gathered facts, giving ok / warn / error and a fix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from torchkiln import baseimages, checkrows, gpu, settingchecks, settings, tlscheck
from torchkiln.checkrows import Row
from torchkiln.engine import EngineFacts
from torchkiln.errors import UserError
from torchkiln.settingchecks import EnvState

MIN_ENGINE = (23, 0)
# compose/cpu.yaml's `!reset` needs Compose 2.24.4; environment-sourced build secrets 2.23.
MIN_COMPOSE = (2, 24, 4)
# Free GB at the engine's root below which a build is refused / warned about, per BUILD_MODE:
# a source build of torch + vision with its ccache takes about 40 GB, official wheels about 10.
DISK_GB = {"source": (40, 60), "torch-wheel": (20, 30), "wheels": (10, 20)}
GB = 1024**3


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
    cpu_only = "cpu.yaml" in env.known().get("COMPOSE_FILE", "")
    install = (
        "install the NVIDIA Container Toolkit and run sudo nvidia-ctk runtime configure "
        "--runtime=docker, then restart Docker"
    )
    if cpu_only:
        return Row(
            "nvidia runtime",
            "warn",
            "no NVIDIA runtime or CDI device; COMPOSE_FILE has cpu.yaml: CPU only",
            f"to use GPUs: {install}, then invoke env --force (it takes compose/cpu.yaml out "
            f"of COMPOSE_FILE)",
        )
    return Row(
        "nvidia runtime",
        "error",
        "no NVIDIA runtime or CDI device: containers would run on the CPU",
        f"{install}; or, to run on the CPU, invoke env --force (it adds compose/cpu.yaml to "
        f"COMPOSE_FILE)",
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
        "free space: invoke clean removes this checkout's images; invoke clean --cache "
        "--all-checkouts also the build cache every torchkiln checkout on this engine shares"
    )
    if free_gb < comfortable:
        status = "error" if free_gb < needed else "warn"
        return Row("disk", status, f"{detail}; a {build_mode} build needs about {needed} GB", fix)
    return Row("disk", "ok", detail)


def diagnose(
    facts: EngineFacts,
    driver: str,
    env: EnvState,
    images: Row | None = None,
    cache: Row | None = None,
    tls: Row | None = None,
    python: Sequence[Row] | None = None,
) -> list[Row]:
    """Run every check over the gathered facts."""
    gpu_rows = [
        replace(row, check=row.check + label)
        for label, variant in settingchecks.cuda_variants(env)
        for row in (check_driver(driver, variant), settingchecks.check_cca(variant))
    ]
    return [
        *check_engine(facts),
        check_gpu_runtime(facts, env),
        settingchecks.check_cuda_source(env),
        *gpu_rows,
        *([images] if images else []),
        *([cache] if cache else []),
        *([tls] if tls else []),
        *(python or []),
        check_disk(facts, *settingchecks.disk_settings(env.known())),
        settingchecks.check_env(env),
    ]


def _version_or_zero(text: str) -> tuple[int, ...]:
    try:
        return gpu.version_tuple(text)
    except ValueError:
        return (0,)


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
        state = settingchecks.env_state(dotenv, os.environ)
    except UserError as error:
        state = settingchecks.env_state(None, os.environ, problem=str(error))
    images = tls = None
    python: list[Row] = []
    if state.values is not None:
        from torchkiln import inputs

        mine = settings.service_values("train", state.values)
        try:
            ca = tlscheck.gather_ca(
                mine, inputs.check_ca_bundle(mine["CA_BUNDLE"], root), os.environ
            )
        except UserError as error:
            ca = tlscheck.CADecision(problem=str(error), fix="set CA_BUNDLE in .env to a PEM file")
        tls = ca.row()
        if not facts.error:
            images = baseimages.base_image_row("train", mine, facts)
            python = baseimages.python_rows("train", mine, ca.unreachable)
    cache = None
    if state.values is not None:
        url = state.values["CCACHE_REMOTE"]
        cache = settingchecks.check_ccache_remote(url, hostfacts.cache_server_problem(url))
    rows = diagnose(facts, hostfacts.gpu_driver_version(), state, images, cache, tls, python)
    index = settingchecks.check_index_password(dotenv) if state.values is not None else None
    rows += [index] if index else []
    if not facts.error:
        from torchkiln import stack

        rows.append(Row("swarm", *stack.swarm_row(stack.swarm_here())))
    return checkrows.render(rows), checkrows.failed(rows)


def build_blockers(
    facts: EngineFacts,
    driver: str,
    values: Mapping[str, str],
    up: bool,
    images: Row | None = None,
) -> list[Row]:
    """The doctor rows that must pass before a build starts (GPU rows only when it will run)."""
    env = EnvState(present=True, values=values)
    rows = [*check_engine(facts), check_disk(facts, *settingchecks.disk_settings(values))]
    if images is not None:
        rows.append(images)
    if up:
        rows.append(check_gpu_runtime(facts, env))
        if driver:  # no driver here: the image may be meant for another machine
            rows.append(check_driver(driver, env))
    return [row for row in rows if row.status == "error"]


def require_ready(values: Mapping[str, str], up: bool, service: str = "") -> EngineFacts:
    """Refuse, in seconds and before any build step, what would make the build or start fail;
    give the engine's facts read on the way (cores and memory for the build's estimate).
    Warnings (a Python to fetch) are printed, one line each."""
    import sys

    from torchkiln import engine, hostfacts

    facts = engine.engine_info()
    images = None
    warnings: list[Row] = []
    if not facts.error:
        engine.plugin_versions(facts)
        if service:
            images = baseimages.base_image_row(service, values, facts)
            if images.status == "ok":
                warnings = baseimages.python_rows(service, values)
    blockers = build_blockers(facts, hostfacts.gpu_driver_version(), values, up, images)
    blockers += [row for row in warnings if row.status == "error"]
    if blockers:
        row = blockers[0]
        raise UserError(f"{row.check}: {row.detail}; fix: {row.fix}")
    for row in warnings:
        if row.status == "warn" and row.fix:
            print(f"warning: {row.check}: {row.detail}; {row.fix}", file=sys.stderr)
    return facts

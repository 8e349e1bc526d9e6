"""Preflight checks: each a pure function of gathered facts, giving ok / warn / error and a fix."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torchkiln import (
    baseimages,
    checkrows,
    gpu,
    indexcheck,
    sccache,
    settingchecks,
    settings,
    tlscheck,
)
from torchkiln.checkrows import Row
from torchkiln.engine import EngineFacts
from torchkiln.errors import UserError
from torchkiln.settingchecks import EnvState

MIN_ENGINE = (23, 0)
# compose/cpu.yaml's `!reset` needs Compose 2.24.4; environment-sourced build secrets 2.23.
MIN_COMPOSE = (2, 24, 4)
# Below estimate.disk_gb a build is refused; below this much more, warned about.
DISK_COMFORT = 1.5
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


@dataclass(frozen=True)
class DiskRoom:
    """What `invoke clean` could free on the engine (bytes; None when not measured)."""

    checkout_images: float | None = None
    build_cache: float | None = None


def disk_need(build_mode: str, values: Mapping[str, str] | None = None) -> int:
    """The GB a build of `build_mode` needs with the other settings as given (estimate.disk_gb)."""
    from torchkiln import estimate

    return estimate.disk_gb({**(values or {}), "BUILD_MODE": build_mode})


def disk_fix(
    build_mode: str,
    free_gb: float,
    room: DiskRoom | None = None,
    floor: str = "",
    values: Mapping[str, str] | None = None,
) -> str:
    """The ways to build with the disk there is, cheapest first: a BUILD_MODE that needs less
    and fits (not under a MIN_FREE_DISK_GB, which every mode keeps), then removing this
    checkout's images (when it has some), and last the build cache every checkout shares (when
    it holds something), said to be a last resort."""
    from torchkiln.checkout import size_text

    needed = disk_need(build_mode, values)
    need = {mode: disk_need(mode, values) for mode in ("source", "torch-wheel", "wheels")}
    cheaper = [mode for mode, gb in need.items() if gb < needed and gb <= free_gb and not floor]
    routes = [
        f"BUILD_MODE={mode} needs about {need[mode]} GB: invoke build --build-mode "
        f"{mode} (or {checkrows.append_to_env([f'BUILD_MODE={mode}'])})"
        for mode in cheaper
    ]
    if floor:
        routes.append(f"MIN_FREE_DISK_GB={floor} in .env asks for this much: lower it")
    images = room.checkout_images if room else None
    if images is None:
        routes.append("invoke clean removes this checkout's images")
    elif images:
        routes.append(f"invoke clean removes this checkout's images ({size_text(images)})")
    cache = room.build_cache if room else None
    if cache is None or cache:
        size = f" ({size_text(cache)})" if cache else ""
        routes.append(
            f"last resort: invoke clean --cache --all-checkouts removes the build cache{size} "
            f"every torchkiln checkout on this engine shares (their next builds compile again)"
        )
    if not routes:
        routes.append("free space on the engine's disk (docker system df says what uses it)")
    return "; or ".join(routes)


def check_disk(
    facts: EngineFacts,
    build_mode: str = "source",
    floor: str = "",
    room: DiskRoom | None = None,
    values: Mapping[str, str] | None = None,
) -> Row:
    """Judge free disk at the engine's root for a build of BUILD_MODE with the other `values`
    (or MIN_FREE_DISK_GB); `room`: what invoke clean could free, for the fix."""
    needed = disk_need(build_mode, values)
    comfortable = round(needed * DISK_COMFORT)
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
    if free_gb < comfortable:
        fix = disk_fix(build_mode, free_gb, room, floor, values)
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
        check_disk(facts, *settingchecks.disk_settings(env.known()), values=env.known()),
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

    from torchkiln import engine, envfile, hostfacts, inputs

    facts = engine.engine_info()
    if not facts.error:
        engine.plugin_versions(facts)
    file = envfile.path(root)
    dotenv = None
    try:
        if file.exists() or file.is_symlink():
            dotenv = envfile.read(file)
            lines = envfile.assignment_lines(file.read_text(encoding="utf-8"))
            state = settingchecks.env_state(dotenv, os.environ, lines=lines)
        else:
            state = settingchecks.env_state(None, os.environ)
    except UserError as error:
        # The lines that can be read still judge the rows that need only them.
        readable, unreadable = envfile.read_readable(file)
        state = settingchecks.env_state(
            readable, os.environ, problem=str(error), unreadable=unreadable
        )
    judged = state.judged()
    values = judged.values or {}
    mine = settings.service_values("train", values)
    try:
        bundle = inputs.check_ca_bundle(mine["CA_BUNDLE"], root)
        ca = tlscheck.gather_ca(mine, bundle, os.environ)
    except UserError as error:
        ca = tlscheck.CADecision(problem=str(error), fix="set CA_BUNDLE in .env to a PEM file")
    tls = ca.row()
    images = None
    python: list[Row] = []
    if not facts.error:
        images = baseimages.base_image_row("train", mine, facts)
        python = baseimages.python_rows("train", mine, ca.unreachable)
    name, url = sccache.cache_setting(values)  # COMPILE_CACHE, or an old CCACHE_REMOTE
    cache = settingchecks.check_compile_cache(url, hostfacts.cache_server_problem(url), name)
    rows = diagnose(facts, hostfacts.gpu_driver_version(), judged, images, cache, tls, python)
    if any(row.check == "disk" and row.status != "ok" for row in rows):
        # Its fix names only what frees space here, measured now.
        disk = check_disk(
            facts, *settingchecks.disk_settings(values), disk_room(root), values=values
        )
        rows = [disk if row.check == "disk" else row for row in rows]
    if not ca.problem:  # the torch index too, placed after the tls row
        bundle = ca.bundle or hostfacts.fresh_image_ca_bundle()
        found = indexcheck.index_rows(mine, bundle, hostfacts.default_index_url())
        at = next((n + 1 for n, row in enumerate(rows) if row.check == "tls"), len(rows))
        rows[at:at] = found
    rows = settingchecks.not_checked(rows, state)
    index = settingchecks.check_index_password(dotenv)
    private = settingchecks.check_env_private(envfile.exposed_secret(file))
    rows += [row for row in (index, private) if row]
    if not facts.error:
        from torchkiln import stack

        rows.append(Row("swarm", *stack.doctor_row(facts.swarm)))
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
    disk = check_disk(facts, *settingchecks.disk_settings(values), values=values)
    rows = [*check_engine(facts), disk]
    if images is not None:
        rows.append(images)
    if up:
        rows.append(check_gpu_runtime(facts, env))
        if driver:  # no driver here: the image may be meant for another machine
            rows.append(check_driver(driver, env))
    return [row for row in rows if row.status == "error"]


def disk_room(root: Path | None) -> DiskRoom:
    """Measure what invoke clean could free: this checkout's images and the build cache (a
    second each); None for what could not be measured."""
    from torchkiln import checkout, clean, compose

    room: dict[str, float | None] = {"checkout_images": None, "build_cache": None}
    with contextlib.suppress(UserError, ValueError):
        for line in checkout.query(clean.DF_COMMAND).splitlines():
            row = json.loads(line) if line.strip() else {}
            if row.get("Type") == "Build Cache":
                room["build_cache"] = clean.size_bytes(row.get("Size", ""))
    if root is not None:
        label = f"label={compose.CHECKOUT_LABEL}={compose.checkout_identity(root)}"
        with contextlib.suppress(UserError):
            sizes = checkout.query(
                ["docker", "image", "ls", "--filter", label, "--format", "{{.Size}}"]
            )
            room["checkout_images"] = sum(clean.size_bytes(size) for size in sizes.split())
    return DiskRoom(**room)


def require_ready(
    values: Mapping[str, str],
    up: bool,
    service: str = "",
    *,
    root: Path | None = None,
    known: Sequence[Row] = (),
) -> EngineFacts:
    """Refuse, in seconds and before any build step, what would make the build or start fail:
    every reason at once (with `known`, those found before, e.g. the index probes), the most
    fundamental first; give the engine's facts read on the way (cores and memory for the
    build's estimate). Warnings (a Python to fetch) are printed, one line each."""
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
    blockers += [row for row in known if row.status == "error"]
    if any(row.check == "disk" for row in blockers):
        # The fix names only what frees space here, measured now.
        disk = check_disk(
            facts, *settingchecks.disk_settings(values), disk_room(root), values=values
        )
        blockers = [disk if row.check == "disk" else row for row in blockers]
    if blockers:
        raise UserError(checkrows.refusal(blockers))
    for row in warnings:
        if row.status == "warn" and row.fix:
            print(f"warning: {row.check}: {row.detail}; {row.fix}", file=sys.stderr)
    return facts

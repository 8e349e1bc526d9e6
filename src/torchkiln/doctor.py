"""Preflight checks: each a pure function of gathered facts, giving ok / warn / error and a fix."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from torchkiln import gpu, sccache, settings
from torchkiln.engine import EngineFacts
from torchkiln.errors import UserError
from torchkiln.hostfacts import CABundle, ImageFacts, TLSVerdict

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
    # When the settings as a whole are refused, those that are valid on their own: the rows
    # that need only them (GPU runtime, disk) still judge what the user set, not the defaults.
    partial: Mapping[str, str] = field(default_factory=dict)

    def known(self) -> Mapping[str, str]:
        """The settings to judge by: all of them, or those that are valid on their own."""
        return self.values if self.values is not None else self.partial


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
        "free space: invoke clean removes this checkout's images; invoke clean --cache "
        "--all-checkouts also the build cache every torchkiln checkout on this engine shares"
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
    return values.get("BUILD_MODE", "source"), values.get("MIN_FREE_DISK_GB", "")


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


def check_ccache_remote(url: str, problem: str, name: str = "COMPILE_CACHE") -> Row | None:
    """Judge the team's compile cache (None when COMPILE_CACHE, or the older CCACHE_REMOTE, is
    unset): a server that does not answer only warns, since sccache then compiles with the
    local cache."""
    from torchkiln import sccache

    if not url:
        return None
    mode = "read-only" if sccache.parse_compile_cache(url, name).read_only else "read-write"
    if problem:
        return Row(
            "compile cache",
            "warn",
            f"{name} ({mode}): {problem}; builds go on with the local cache only",
            "start the server (docker compose --profile cache up -d compile-cache), or check "
            "the address: build steps reach it through the host's address (e.g. the docker0 "
            "bridge's), never 127.0.0.1",
        )
    return Row("compile cache", "ok", f"{name} answers ({mode})")


def check_index_password(dotenv: Mapping[str, str | None] | None) -> Row | None:
    """Warn when .env's PIP_INDEX_URL holds a password: invoke build splits it off into a
    secret, but a plain `docker compose build` passes .env's value as a build arg."""
    from torchkiln import urls

    value = (dotenv or {}).get("PIP_INDEX_URL") or ""
    if not urls.password_of(value):
        return None
    public = urls.parse("PIP_INDEX_URL", value.strip()).without_password().text()
    return Row(
        "index password",
        "warn",
        "PIP_INDEX_URL in .env holds a password: invoke build passes it as a BuildKit secret, "
        "but a plain docker compose build (or an IDE's rebuild) would store it in the image's "
        "history",
        f"write PIP_INDEX_URL={public} in .env and export the password as PIP_INDEX_TOKEN",
    )


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
        *([tls] if tls else []),
        *(python or []),
        check_disk(facts, *disk_settings(env.known())),
        check_env(env),
    ]


def failed(rows: list[Row]) -> bool:
    """Tell whether any row is an error."""
    return any(row.status == "error" for row in rows)


def render(rows: list[Row]) -> str:
    """Lay the rows out as a plain-text table with a fix under each failure; any URL password
    a row names (an index, a proxy) shows as ****."""
    from torchkiln.urls import mask_text

    width = max(len(row.check) for row in rows)
    lines = []
    for row in rows:
        mark = {"ok": "ok   ", "warn": "WARN ", "error": "ERROR"}[row.status]
        lines.append(f"{row.check:<{width}}  {mark}  {mask_text(row.detail)}")
        if row.fix and row.status != "ok":
            lines.append(f"{'':<{width}}         fix: {mask_text(row.fix)}")
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
        return EnvState(
            present=dotenv is not None,
            values=None,
            problem=str(error),
            partial=valid_on_their_own(settings.layered(environ, dotenv or {})),
        )
    warnings = tuple(envfile.unknown_names(dotenv or {}))
    return EnvState(present=dotenv is not None, values=values, warnings=warnings)


def valid_on_their_own(given: Mapping[str, str]) -> dict[str, str]:
    """The given settings that pass their own check, normalised (the others left out)."""
    valid: dict[str, str] = {}
    for name, value in settings.normalize(given).items():
        setting = settings.BY_NAME.get(name)
        try:
            if setting and setting.check:
                setting.check(name, value)
        except UserError:
            continue
        valid[name] = value
    return valid


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
    images = tls = None
    python: list[Row] = []
    if state.values is not None:
        from torchkiln import compose

        mine = compose.service_values("train", state.values)
        try:
            ca = gather_ca(mine, compose.check_ca_bundle(mine["CA_BUNDLE"], root), os.environ)
        except UserError as error:
            ca = CADecision(problem=str(error), fix="set CA_BUNDLE in .env to a PEM file")
        tls = ca.row()
        if not facts.error:
            images = base_image_row("train", mine, facts)
            python = python_rows("train", mine, ca.unreachable)
    cache = None
    if state.values is not None:
        name, url = sccache.cache_setting(state.values)  # compile cache (sccache.py)
        cache = check_ccache_remote(url, hostfacts.cache_server_problem(url), name)
    rows = diagnose(facts, hostfacts.gpu_driver_version(), state, images, cache, tls, python)
    index = check_index_password(dotenv) if state.values is not None else None
    rows += [index] if index else []
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


def check_base_images(
    service: str,
    values: Mapping[str, str],
    problems: Mapping[str, str],
    local: Sequence[ImageFacts] = (),
    gpu_here: bool = True,
) -> Row:
    """Judge whether each base image is here or resolvable; for a missing one, say what
    replaces it as lines that work here: an apt-based image that is here, with its Python,
    the CUDA route and the BUILD_MODE (the CPU route too where no GPU reaches containers)."""
    images = base_images(service, values)
    missing = [(image, problems[image]) for image in images if problems.get(image)]
    if not missing:
        return Row("base images", "ok", ", ".join(images))
    image, reason = missing[0]
    setting = images[image]
    routes = [
        f"set {setting} to a copy you can reach (a registry mirror, or docker load an image "
        f"saved on another machine)"
    ]
    usable = apt_images(local) if service != "ngc" else []
    if usable:
        facts, python, distro = usable[0]
        # Official CUDA wheels need no CCA; compiling does, and with no GPU here none is found.
        mode = values.get("BUILD_MODE", "source")
        if mode != "wheels" and not values.get("CCA"):
            mode = "wheels"
        here = [f"BUILD_IMAGE={facts.image}", f"TRAIN_IMAGE={facts.image}"]
        here.append(f"PYTHON_VERSION={python}")
        pypi = append_to_env(["CUDA_FROM=pypi", f"BUILD_MODE={mode}", *here])
        routes.append(
            f"or build on {facts.image} ({distro}, Python {python}), which is here, with CUDA "
            f"from the Python index: {pypi}"
        )
        if not gpu_here:
            routes.append(
                f"or, for the CPU only (torch from PyTorch's CPU index, or --wheelhouse DIR): "
                f"{append_to_env(['CUDA_FROM=none', 'BUILD_MODE=wheels', *here])}"
            )
    elif service != "ngc":
        routes.append(
            "or docker load an apt-based image (ubuntu:24.04, debian:12), then set BUILD_IMAGE "
            "and TRAIN_IMAGE to it, PYTHON_VERSION to its python3 (3.12, 3.11) and "
            "CUDA_FROM=pypi in .env (invoke doctor then names the lines)"
        )
    return Row(
        "base images",
        "error",
        f"base image {image} ({setting}) is not here and cannot be pulled: {reason} (a Docker "
        f"Hub rate limit looks the same: docker login)",
        "; ".join(routes),
    )


def local_base_candidates(limit: int = 3) -> list[ImageFacts]:
    """Read the distro and Python of a few local images whose names say Debian or Ubuntu (then
    CUDA), the images a build could start from, in about a second each."""
    from torchkiln import hostfacts

    def rank(name: str) -> int:
        short = name.rsplit("/", 1)[-1]
        return 0 if re.search(r"debian|ubuntu", short) else 1 if "cuda" in short else 2

    names = sorted(hostfacts.local_image_names(), key=rank)
    found = [hostfacts.image_facts(name) for name in names if rank(name) < 2][:limit]
    return [facts for facts in found if not facts.torchkiln]


def base_image_row(service: str, values: Mapping[str, str], facts: EngineFacts) -> Row:
    """Check a service's base images on the engine; name local replacements when one is missing."""
    from torchkiln import engine

    problems = {image: engine.image_reachable(image) for image in base_images(service, values)}
    local = local_base_candidates() if any(problems.values()) else []
    gpu_here = facts.nvidia and "cpu.yaml" not in values.get("COMPOSE_FILE", "")
    return check_base_images(service, values, problems, local, gpu_here)


def python_rows(
    service: str, values: Mapping[str, str], index_unreachable: bool = False
) -> list[Row]:
    """Read the base images' Python (local ones from the image, others from their names)."""
    from torchkiln import hostfacts

    if service not in settings.SOURCE:
        return []
    images = dict.fromkeys(values[name] for name in BASE_IMAGE_SETTINGS[service])
    facts = [hostfacts.image_facts(image) for image in images]
    return check_python(values, facts, index_unreachable)


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
            images = base_image_row(service, values, facts)
            if images.status == "ok":
                warnings = python_rows(service, values)
    blockers = build_blockers(facts, hostfacts.gpu_driver_version(), values, up, images)
    blockers += [row for row in warnings if row.status == "error"]
    if blockers:
        row = blockers[0]
        raise UserError(f"{row.check}: {row.detail}; fix: {row.fix}")
    for row in warnings:
        if row.status == "warn" and row.fix:
            print(f"warning: {row.check}: {row.detail}; {row.fix}", file=sys.stderr)
    return facts


# --- TLS: does the network inspect TLS, and which CA bundle do builds need? ------------------


@dataclass(frozen=True)
class CADecision:
    """Which CA bundle builds get as their secret, and what to say about it: `note` (one line)
    when it was chosen here by itself, `problem` and `fix` when the build must be refused."""

    bundle: str = ""
    detail: str = ""
    note: str = ""
    problem: str = ""
    fix: str = ""
    unreachable: bool = False  # no index answered: nothing is known either way

    def row(self) -> Row:
        """Doctor's row for it."""
        if self.problem:
            return Row("tls", "error", self.problem, self.fix)
        if self.unreachable:
            return Row("tls", "warn", self.detail, self.fix)
        return Row("tls", "ok", self.note.removeprefix("note: ") or self.detail)


PROXY_CA_FIX = (
    "get the CA certificate (PEM) of the proxy or index from whoever runs it, then: invoke "
    "build --ca-bundle /path/to/that-ca.pem (or CA_BUNDLE=/path/to/that-ca.pem in .env)"
)


def decide_ca(
    urls: Sequence[str],
    configured: CABundle | None,
    candidates: Sequence[CABundle],
    system: str,
    fresh: str,
    verify: Callable[[str, str], TLSVerdict],
) -> CADecision:
    """Decide the build's CA bundle from TLS handshakes with the indexes it downloads from.

    `verify(url, bundle)` shakes hands; `fresh` is what a freshly installed image trusts
    (Mozilla's list). An index that a fresh image does not trust but a bundle of this host does
    is a TLS-inspecting network (or a private CA): builds take that bundle by themselves. A
    bundle the user gave is used as given, and refused when it does not verify an index.
    """
    if not urls:
        return CADecision(configured.path if configured else "", "no https index to check")

    def first_problem(bundle: str) -> tuple[str, TLSVerdict]:
        verdicts = [(url, verify(url, bundle)) for url in urls]
        for wanted in ("untrusted", "unreachable"):
            for url, verdict in verdicts:
                if verdict.status == wanted:
                    return url, verdict
        return urls[0], TLSVerdict("ok")

    def unreachable(url: str, verdict: TLSVerdict, bundle: str = "") -> CADecision:
        return CADecision(
            bundle,
            f"{url} does not answer from here ({verdict.reason}): TLS not checked",
            fix="a build needs the index unless it has --wheelhouse DIR; check HTTPS_PROXY",
            unreachable=True,
        )

    others = [bundle for bundle in candidates if not configured or bundle.path != configured.path]
    if system and all(bundle.path != system for bundle in others):
        others.append(CABundle("the system's CA bundle", system))
    if configured:
        url, verdict = first_problem(configured.path)
        if verdict.status == "unreachable":
            return unreachable(url, verdict, configured.path)
        if verdict.status == "ok":
            detail = f"{configured.source} {configured.path} verifies {url}"
            return CADecision(configured.path, detail)
        better = next((b for b in others if first_problem(b.path)[1].status == "ok"), None)
        fix = (
            f"invoke build --ca-bundle {better.path} ({better.source}, which verifies it), or "
            f"CA_BUNDLE={better.path} in .env"
            if better
            else PROXY_CA_FIX
        )
        problem = (
            f"{configured.source} {configured.path} does not verify {url} ({verdict.reason}); "
            f"builds would fail at their first download"
        )
        return CADecision(configured.path, problem=problem, fix=fix)
    url, verdict = first_problem(fresh) if fresh else (urls[0], TLSVerdict("unreachable", "?"))
    if verdict.status == "ok":
        return CADecision("", f"{url} verifies with the CAs a fresh image has: no CA bundle needed")
    if verdict.status == "unreachable":
        # Nothing to go on but the host's own setting: its tools use that bundle on this network.
        custom = next((bundle for bundle in others if bundle.path != system), None)
        if custom is None:
            return unreachable(url, verdict)
        note = (
            f"note: {custom.source} names {custom.path}, not the system's CA bundle: builds use "
            f"it as their CA secret (as --ca-bundle {custom.path}); set CA_BUNDLE in .env to "
            f"choose another"
        )
        return CADecision(custom.path, note=note)
    for bundle in others:
        if first_problem(bundle.path)[1].status == "ok":
            note = (
                f"note: {url} presents a certificate a fresh image does not trust "
                f"({verdict.reason}): a TLS-inspecting proxy or a private CA; {bundle.source} "
                f"{bundle.path} verifies it, so builds use it as their CA secret (as --ca-bundle "
                f"{bundle.path})"
            )
            return CADecision(bundle.path, note=note)
    problem = (
        f"{url} presents a certificate that neither a fresh image nor any CA bundle of this host "
        f"trusts ({verdict.reason}): a TLS-inspecting proxy or a private CA; builds would fail "
        f"at their first download"
    )
    return CADecision(problem=problem, fix=PROXY_CA_FIX)


def index_urls(values: Mapping[str, str], default_index: str) -> list[str]:
    """The https indexes a build downloads from: PIP_INDEX_URL (else pip's default), and
    TORCH_INDEX_URL where it is set."""
    urls = [values.get("PIP_INDEX_URL") or default_index, values.get("TORCH_INDEX_URL", "")]
    return list(dict.fromkeys(url for url in urls if url.startswith("https://")))


def gather_ca(
    values: Mapping[str, str], configured_path: str, environ: Mapping[str, str]
) -> CADecision:
    """Probe the build's indexes from here (seconds) and decide its CA bundle."""
    from torchkiln import hostfacts

    configured = CABundle("CA_BUNDLE", configured_path) if configured_path else None
    return decide_ca(
        index_urls(values, hostfacts.default_index_url()),
        configured,
        hostfacts.host_ca_bundles(environ),
        hostfacts.system_ca_bundle(),
        hostfacts.fresh_image_ca_bundle(),
        lambda url, bundle: hostfacts.tls_verdict(url, bundle, environ),
    )


# --- Python: the base images' own, or one fetched ----------------------------------------------

# The python3 each distro release installs with apt (packages.debian.org, packages.ubuntu.com).
DISTRO_PYTHON = {
    ("debian", "11"): "3.9",
    ("debian", "12"): "3.11",
    ("debian", "13"): "3.13",
    ("ubuntu", "20.04"): "3.8",
    ("ubuntu", "22.04"): "3.10",
    ("ubuntu", "24.04"): "3.12",
    ("ubuntu", "25.04"): "3.13",
    ("ubuntu", "25.10"): "3.13",
}
CODENAMES = {
    "bullseye": ("debian", "11"),
    "bookworm": ("debian", "12"),
    "trixie": ("debian", "13"),
    "focal": ("ubuntu", "20.04"),
    "jammy": ("ubuntu", "22.04"),
    "noble": ("ubuntu", "24.04"),
}
_DISTRO_IN_NAME = re.compile(r"(debian|ubuntu)[:_-]?(\d+(?:\.\d+)?|[a-z]+)")


def distro_from_name(image: str) -> tuple[str, str]:
    """Guess an image's distro from its name (`ubuntu:24.04`, `…-ubuntu24.04`, `debian:bookworm`);
    ('', '') when the name does not say."""
    for distro, version in _DISTRO_IN_NAME.findall(image.rsplit("/", 1)[-1]):
        if version in CODENAMES:
            return CODENAMES[version]
        if version[0].isdigit():
            return distro, version
    return "", ""


def image_python(facts: ImageFacts) -> tuple[str, str]:
    """The Python a build on this image gets without fetching one, and the distro named:
    its python3, else the one its distro installs; ('', distro) when that is not known."""
    distro, version = facts.distro, facts.distro_version
    if not distro:
        distro, version = distro_from_name(facts.image)
    named = f"{distro.capitalize()} {version}".strip()
    return facts.python or DISTRO_PYTHON.get((distro, version), ""), named


def check_python(
    values: Mapping[str, str], images: Sequence[ImageFacts], index_unreachable: bool = False
) -> list[Row]:
    """Judge PYTHON_VERSION against each base image's own Python: another version is fetched
    with uv from the index and the internet, which an air-gapped build cannot."""
    wanted = values["PYTHON_VERSION"]
    rows = []
    for facts in images:
        python, distro = image_python(facts)
        where = f"{facts.image} ({distro})" if distro else facts.image
        if not python:
            reason = "not here, and its name does not say" if facts.error else "unknown distro"
            rows.append(Row("python", "warn", f"{where}: its Python is not known ({reason})"))
        elif python == wanted:
            rows.append(Row("python", "ok", f"{where} has Python {python} = PYTHON_VERSION"))
        else:
            status = "error" if index_unreachable else "warn"
            detail = (
                f"{where} has Python {python}, not PYTHON_VERSION {wanted}: the build fetches "
                f"CPython {wanted} with uv (from the Python index, then the internet)"
            )
            if index_unreachable:
                detail += ", and the index does not answer from here"
            fix = (
                f"{append_to_env([f'PYTHON_VERSION={python}'])} (the image's own Python), or "
                f"keep {wanted} where the internet is reachable"
            )
            rows.append(Row("python", status, detail, fix))
    return rows


def append_to_env(lines: Sequence[str]) -> str:
    """A command that adds settings to .env, to type as printed (a later line wins)."""
    return "printf '\\n" + "\\n".join(lines) + "\\n' >> .env"


def apt_images(images: Sequence[ImageFacts]) -> list[tuple[ImageFacts, str, str]]:
    """The local images a build can start from (Debian or Ubuntu, Python known), with their
    Python and distro."""
    usable = []
    for facts in images:
        python, distro = image_python(facts)
        if not facts.error and facts.distro in ("debian", "ubuntu") and python:
            usable.append((facts, python, distro))
    return usable

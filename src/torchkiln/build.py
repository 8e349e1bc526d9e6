"""`invoke build`: validate in seconds, build the service through Compose, start it, summarise.

`plan` is pure (options and settings in, commands out); `build_service` is the thin edge that
executes them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torchkiln import (
    buildchecks,
    compose,
    doctor,
    envfile,
    extensions,
    farm,
    gpu,
    runner,
    sccache,
    settings,
)
from torchkiln.errors import UserError

IMAGE_SETTING = {"train": "TRAIN_IMAGE_NAME", "full": "FULL_IMAGE_NAME", "ngc": "NGC_IMAGE_NAME"}
_JOBS_LINE = re.compile(r"^(?:#\d+ [\d.]+ )?torchkiln-jobs: (.+)$", re.MULTILINE)


@dataclass
class BuildOptions:
    """What `invoke build` and `invoke wheels` were asked for on the command line."""

    service: str = "train"
    cca: str | None = None
    torch: str | None = None
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
    INPUTS = ("cca", "torch", "sources", "extensions", "wheelhouse", "ca_bundle")

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
class BuildPlan:
    """Everything `invoke build` will do, decided before anything runs."""

    root: Path
    options: BuildOptions
    values: dict[str, str]
    build_args: dict[str, str]
    contexts: dict[str, str]
    ca_bundle: str
    image: str
    files: list[str]
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[str] = field(default_factory=list)
    push_ref: str = ""
    # `invoke --dry build`: its override goes to a file of its own, and nothing a later command
    # reads (the record `invoke wheels` reuses, the log, the timings) is written.
    dry: bool = False
    # Lines said before the build (how --extension and EXTENSIONS were joined).
    notes: list[str] = field(default_factory=list)

    @property
    def service(self) -> str:
        """The Compose service built."""
        return self.options.service

    @property
    def builder(self) -> str:
        """The buildx builder ('' for the current one)."""
        return self.values["BUILDX_BUILDER"]

    @property
    def override_path(self) -> str:
        """This build's Compose override, relative to the checkout."""
        prefix = "dry-" if self.dry else ""
        return f"{compose.STATE_DIR}/{prefix}build-{self.service}.yaml"

    @property
    def log_path(self) -> str:
        """The full output of this service's last build, relative to the checkout."""
        return f"{compose.STATE_DIR}/build-{self.service}.log"

    @property
    def record_path(self) -> Path:
        """Where the build's inputs are recorded for `invoke wheels`."""
        return self.root / compose.STATE_DIR / f"build-{self.service}.json"

    @property
    def build(self) -> list[str]:
        """The build command."""
        return compose.build_command(
            self.service,
            [*self.files, self.override_path],
            no_cache=self.options.no_cache,
            builder=self.builder,
        )

    @property
    def push(self) -> list[str]:
        """The command that pushes the image to the registry ([] without --push)."""
        return compose.push_command(self.push_ref) if self.push_ref else []

    @property
    def start(self) -> list[str]:
        """The command that starts the built service."""
        return compose.up_command(self.service)

    def override_text(self) -> str:
        """The Compose override: every build arg, named contexts, registry cache, push tag."""
        return compose.override_text(
            self.service,
            self.build_args,
            self.contexts,
            ca_bundle=self.ca_bundle,
            cache_from=self.cache_from,
            cache_to=self.cache_to,
            tags=[self.push_ref] if self.push_ref else [],
            checkout=compose.checkout_identity(self.root),
        )


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
    if options.ca_bundle is not None:
        flags["CA_BUNDLE"] = options.ca_bundle
    if options.builder is not None:
        flags["BUILDX_BUILDER"] = options.builder
    return flags


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
    image_ref, cache_ref = compose.registry_refs(repository, service) if repository else ("", "")

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
        return [compose.cache_spec(value, export=export)]

    imports = spec("--cache-from", cache_from, export=False)
    exports = spec("--cache-to", cache_to, export=True)
    if push and not repository:
        raise UserError(
            "--push needs REGISTRY_IMAGE, the registry repository to push to; set "
            "REGISTRY_IMAGE=registry.example.com/team/torchkiln in .env or the environment"
        )
    return imports, exports, image_ref if push else ""


def validate(service: str, values: Mapping[str, str], extensions: bool = False) -> None:
    """Refuse, in seconds, what would fail hours into the build."""
    if service not in settings.SOURCE:
        return
    mine = compose.service_values(service, values)
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


def plan(
    root: Path,
    options: BuildOptions,
    *,
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
    cwd: Path | None = None,
) -> BuildPlan:
    """Resolve and check every input, and decide the commands; runs nothing."""
    cwd = cwd or Path.cwd()
    service = compose.check_service(options.service)
    specs, extension_contexts = compose.split_extensions(options.extensions, cwd, root)
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
        contexts.update(compose.parse_sources(options.sources, cwd))
        if options.wheelhouse:
            contexts[compose.WHEELHOUSE_CONTEXT] = compose.check_wheelhouse(options.wheelhouse, cwd)
    # A --ca-bundle path is relative to where you are; one in .env to the repository.
    bundle = compose.check_ca_bundle(
        values["CA_BUNDLE"], cwd if options.ca_bundle is not None else root
    )
    return BuildPlan(
        root=root,
        options=options,
        values=values,
        build_args=compose.build_arg_values(service, values, len(extension_contexts)),
        contexts=contexts,
        ca_bundle=bundle,
        image=settings.effective(values)[IMAGE_SETTING[service]],
        files=compose.compose_files(values["COMPOSE_FILE"]),
        cache_from=cache_imports,
        cache_to=cache_exports,
        push_ref=push_ref,
        notes=notes if options.extensions else [],
    )


def with_recorded_inputs(root: Path, given: BuildOptions) -> tuple[BuildOptions, str]:
    """Fill the inputs `invoke wheels` was not given from the last build of the service, so
    the export reproduces that build's stages (and reuses its cache); say which were taken."""
    record = root / compose.STATE_DIR / f"build-{given.service}.json"
    try:
        inputs = json.loads(record.read_text(encoding="utf-8"))["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return given, ""
    taken: dict[str, object] = {}
    for name in BuildOptions.INPUTS:
        mine, theirs = getattr(given, name), inputs.get(name)
        if (mine is None or mine == []) and theirs not in (None, []):
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


def build_secrets(values: Mapping[str, str], root: Path | None = None) -> dict[str, str]:
    """The environment Compose and buildx read the env-sourced build secrets from (the farm's
    token: BUILD_FARM_TOKEN, else the one `invoke farm` wrote under the checkout `root`)."""
    token = values.get("BUILD_FARM_TOKEN", "")
    if root is not None:  # build farm (sccache.py)
        token = sccache.farm_token(values, root, compose.STATE_DIR)
    return compose.build_secrets(values, token)


# --- The estimate, and what this machine's builds teach it ---------------------------------------
#
# Published figures for compiling PyTorch with CUDA (core-hours: wall hours x parallel jobs). They
# give a range, not a promise; this machine's own recorded builds (below) narrow it.
# - conda-forge/pytorch-cpu-feedstock#52 (2021): "almost exactly 2 hours ... using 10 cores",
#   1 h 20 min of it compiling, for the GPU of the machine plus PTX: about 13 core-hours before
#   FlashAttention, memory-efficient attention and the sm90 CUTLASS kernels were added.
# - pytorch/pytorch#126980 (2024): PyTorch's own CUDA nightly needs about 5 h of compiling.
# - pytorch/pytorch#58596: single CUDA objects take up to 12 min (PowKernel.cu): a serial tail.
# - pytorch/pytorch#133686: the extended-MMA CUTLASS kernels for sm90 and newer "add a bit to
#   compile time"; 9.0 and 10.0 builds also compile their 90a/100a kernels (row-wise scaled mm,
#   FlashAttention's Hopper/Blackwell paths), nearly another arch's worth of device code.
# - pytorch/pytorch#194502: FlashAttention's kernels are "the largest source tree under
#   third_party", and they compile per arch.
# Together (torchkiln issue 17): about 25-40 core-hours for the first arch, 8-15 for each further
# one (device code is compiled once per arch, host C++ once), 4-8 more for 9.0/10.0's a-kernels.
CORE_HOURS_FIRST_ARCH = (25.0, 40.0)
CORE_HOURS_MORE_ARCH = (8.0, 15.0)
CORE_HOURS_ARCH_SPECIFIC = (4.0, 8.0)
# A CPU-only torch compiles the host C++ alone: a fraction of the first arch's figure.
CORE_HOURS_CPU = (4.0, 8.0)
# Official wheels: minutes of downloading; CUDA_FROM=pypi adds about 3 GB of NVIDIA's wheels
# (pip's cache mount keeps them for the next build).
DOWNLOAD_MINUTES = (3.0, 10.0)
PYPI_CUDA_MINUTES = (5.0, 15.0)
# torchvision's CUDA kernels and a mid-sized CUDA extension (torch-scatter, causal-conv1d: the
# latter made most of a 38 min build on a small machine, torchkiln issue 20), one arch, in
# core-hours.
VISION_CORE_HOURS = (0.5, 1.5)
EXTENSION_CORE_HOURS = (0.5, 1.5)
# What does not parallelise: CMake's configure, the slowest objects, linking libtorch_cuda.
SERIAL_HOURS = (0.3, 0.6)
# Archs whose builds add arch-specific (a) CUTLASS kernels besides the plain ones.
ARCH_SPECIFIC_BASES = ("9.0", "10.0")
DISK_GB_PER_ARCH = (40, 4)
# One compile job per 6 GB of memory: one FlashAttention translation unit takes about 4.5 GB
# (pytorch/pytorch#124018); #108174 needed MAX_JOBS=2 on 16 GB. docker/scripts/build-wheel.sh
# applies the same rule.
GB_PER_JOB = 6
COMPILE_STAGES = ("magma-build", "torch-build", "vision-build", "audio-build", "extensions-build")
TIMINGS_FILE = "timings.json"
# Kept per checkout: enough to learn from, small enough to read in no time.
TIMINGS_KEPT = 50


def parallel_jobs(values: Mapping[str, str], cpus: int, memory_bytes: int) -> int:
    """The compile jobs a build runs: MAX_JOBS, else the cores, at most one per GB_PER_JOB."""
    if values.get("MAX_JOBS"):
        return int(values["MAX_JOBS"])
    by_memory = max(1, memory_bytes // (GB_PER_JOB * 1024**3)) if memory_bytes else cpus
    return max(1, min(cpus or 1, by_memory))


def arch_units(cca: str, cuda: bool) -> tuple[float, float]:
    """The core-hours (low, high) of compiling torch for a CCA (or for the CPU)."""
    if not cuda:
        return CORE_HOURS_CPU
    items = gpu.parse_cca(cca)
    specific = sum(1 for item in items if item.base in ARCH_SPECIFIC_BASES)
    return tuple(  # type: ignore[return-value]
        first + more * (len(items) - 1) + extra * specific
        for first, more, extra in zip(
            CORE_HOURS_FIRST_ARCH, CORE_HOURS_MORE_ARCH, CORE_HOURS_ARCH_SPECIFIC, strict=True
        )
    )


def learned_torch_hours(
    history: Sequence[Mapping[str, object]], cca: str, cuda: bool, jobs: int
) -> tuple[float, str] | None:
    """Scale this machine's last cold torch compile (mostly ccache misses) of the same kind to
    this build's archs and jobs: (hours, what it was), or None when there is none."""
    for entry in reversed(history):
        if entry.get("stage") != "torch-build" or bool(entry.get("cuda")) != cuda:
            continue
        hits, misses = int(entry.get("hits") or 0), int(entry.get("misses") or 0)
        if hits > misses:  # a rebuild from ccache says nothing about a first compile
            continue
        try:
            then_units = sum(arch_units(str(entry.get("cca") or ""), cuda)) / 2
            now_units = sum(arch_units(cca, cuda)) / 2
        except UserError:
            continue
        seconds = float(entry.get("seconds") or 0)  # type: ignore[arg-type]
        then_jobs = int(entry.get("jobs") or jobs)  # type: ignore[call-overload]
        hours = seconds / 3600 * (now_units / then_units) * (then_jobs / jobs)
        archs = f"for {entry.get('cca')}" if cuda else "for the CPU"
        what = (
            f"this machine compiled torch {archs} in {runner.format_duration(seconds)} with "
            f"{then_jobs} jobs on {entry.get('date', '?')}"
        )
        return hours, what
    return None


def estimate(
    values: Mapping[str, str],
    cpus: int,
    memory_bytes: int,
    history: Sequence[Mapping[str, object]] = (),
    local_extensions: int = 0,
) -> str:
    """Say, before a build starts, how long it will take (a range) and how much disk it needs,
    from published build times and from what this machine's earlier builds recorded."""
    mode = values["BUILD_MODE"]
    jobs = parallel_jobs(values, cpus, memory_bytes)
    cuda = values["CUDA_FROM"] != "none" and bool(values["CCA"])
    # How much more device code than for one arch: torchvision and extensions scale the same.
    scale = [sum(arch_units(values["CCA"], cuda)) / sum(arch_units("8.6", True))] if cuda else [1]
    extensions = len(values["EXTENSIONS"].split()) + local_extensions
    minutes = [*DOWNLOAD_MINUTES]
    if values["CUDA_FROM"] == "pypi":
        minutes = [low + more for low, more in zip(minutes, PYPI_CUDA_MINUTES, strict=True)]
    core = [0.0, 0.0]
    if mode == "torch-wheel":
        core = [c + v * scale[0] for c, v in zip(core, VISION_CORE_HOURS, strict=True)]
    core = [c + x * scale[0] * extensions for c, x in zip(core, EXTENSION_CORE_HOURS, strict=True)]
    learned: list[str] = []
    last_extensions = _last(history, "extensions-build")
    if extensions and last_extensions:
        took = runner.format_duration(float(last_extensions["seconds"]))  # type: ignore[arg-type]
        learned.append(f"this machine's last extension compile took {took}")
    jobs_text = f"{jobs} parallel job{'s' if jobs != 1 else ''}"
    memory = f"{memory_bytes / 1024**3:.0f} GB memory"
    why = "MAX_JOBS" if values.get("MAX_JOBS") else f"one job per {GB_PER_JOB} GB"
    if mode != "source":
        low = minutes[0] / 60 + core[0] / jobs
        high = minutes[1] / 60 + core[1] / jobs
        disk = 20 if mode == "torch-wheel" or values["CUDA_FROM"] == "pypi" else 10
        last = _last(history, "build", mode)
        if last:
            took = runner.format_duration(float(last["seconds"]))  # type: ignore[arg-type]
            learned.insert(0, f"this machine's last BUILD_MODE={mode} build took {took}")
        compiles = f", compiling with {jobs_text} ({cpus} cores, {memory})" if core[1] else ""
        text = f"estimate: BUILD_MODE={mode}{compiles} takes {_range(low, high)}"
        if extensions:
            text += " (flash-attn-sized extensions take hours more)"
        text += "".join(f"; {said}" for said in learned)
        return f"{text}; it needs about {disk} GB of disk (an estimate, not a promise)"
    items = gpu.parse_cca(values["CCA"]) if cuda else []
    low_core, high_core = arch_units(values["CCA"], cuda)
    low = SERIAL_HOURS[0] + minutes[0] / 60 + (low_core + core[0]) / jobs
    high = SERIAL_HOURS[1] + minutes[1] / 60 + (high_core + core[1]) / jobs
    disk = DISK_GB_PER_ARCH[0] + DISK_GB_PER_ARCH[1] * max(0, len(items) - 1)
    what = (
        f"{len(items)} arch{'s' if len(items) != 1 else ''} ({values['CCA']})"
        if cuda
        else ("the CPU")
    )
    text = (
        f"estimate: a PyTorch source build for {what} with {jobs_text} ({cpus} cores, "
        f"{memory}: {why}) takes {_range(low, high)} the first time (published figures: "
        f"{_core_hours_text(cuda)})"
    )
    torch_hours = learned_torch_hours(history, values["CCA"], cuda, jobs)
    if torch_hours:
        hours, said = torch_hours
        learned.insert(0, f"{said}, so here about {runner.format_duration(hours * 3600)}")
    text += "".join(f"; {said}" for said in learned)
    return (
        f"{text}; it needs about {disk} GB of disk, and a rebuild reuses ccache (an estimate, "
        f"not a promise)"
    )


def _last(
    history: Sequence[Mapping[str, object]], stage: str, mode: str | None = None
) -> Mapping[str, object] | None:
    for entry in reversed(history):
        if entry.get("stage") == stage and (mode is None or entry.get("mode") == mode):
            return entry
    return None


def _range(low_hours: float, high_hours: float) -> str:
    low, high = runner.format_duration(low_hours * 3600), runner.format_duration(high_hours * 3600)
    return f"about {low}" if low == high else f"{low} to {high}"


def _core_hours_text(cuda: bool) -> str:
    if not cuda:
        return f"{CORE_HOURS_CPU[0]:.0f}-{CORE_HOURS_CPU[1]:.0f} core-hours without CUDA"
    first, more, extra = CORE_HOURS_FIRST_ARCH, CORE_HOURS_MORE_ARCH, CORE_HOURS_ARCH_SPECIFIC
    return (
        f"{first[0]:.0f}-{first[1]:.0f} core-hours for the first arch, {more[0]:.0f}-"
        f"{more[1]:.0f} for each further one, {extra[0]:.0f}-{extra[1]:.0f} more for 9.0 and "
        f"10.0's arch-specific kernels"
    )


_STEP_STAT = re.compile(
    r"^#(\d+) [\d.]+ torchkiln-(sccache|jobs): .*?(?:\bhits=(\d+) misses=(\d+)|MAX_JOBS=(\d+))",
    re.MULTILINE,
)


def timing_entries(
    values: Mapping[str, str], log: str, seconds: float, date: str
) -> list[dict[str, object]]:
    """What a finished build teaches later estimates: each compile stage that ran (not from
    cache) with its seconds, jobs and ccache counts, and the build's total for its mode."""
    stages = {number: stage for number, _, stage, _ in _STEP_HEADER.findall(log)}
    per_step: dict[str, dict[str, int]] = {}
    for number, kind, hits, misses, jobs in _STEP_STAT.findall(log):
        stat = per_step.setdefault(number, {"hits": 0, "misses": 0, "jobs": 0})
        if kind == "sccache":
            stat["hits"] += int(hits)
            stat["misses"] += int(misses)
        else:
            stat["jobs"] = max(stat["jobs"], int(jobs))
    cuda = values["CUDA_FROM"] != "none" and bool(values["CCA"])
    common = {"date": date, "mode": values["BUILD_MODE"], "cuda": cuda, "cca": values["CCA"]}
    entries: list[dict[str, object]] = [{"stage": "build", "seconds": round(seconds), **common}]
    for number, spent in _STEP_DONE.findall(log):
        stage = stages.get(number)
        if stage in COMPILE_STAGES:
            stat = per_step.get(number, {})
            entries.append({"stage": stage, "seconds": round(float(spent)), **common, **stat})
    return entries


def read_timings(root: Path) -> list[dict[str, object]]:
    """The timings this checkout's builds recorded ([] when none, or unreadable)."""
    try:
        recorded = json.loads((root / compose.STATE_DIR / TIMINGS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(recorded, list):
        return []
    return [entry for entry in recorded if isinstance(entry, dict)]


def record_timings(root: Path, entries: list[dict[str, object]]) -> None:
    """Add a build's timings to the record later estimates read."""
    kept = [*read_timings(root), *entries][-TIMINGS_KEPT:]
    # A convenience for later estimates: a checkout that cannot be written loses only that.
    with contextlib.suppress(OSError):
        file = root / compose.STATE_DIR / TIMINGS_FILE
        envfile.write_atomic(file, json.dumps(kept, indent=1) + "\n", 0o644)


_STEP_DONE = re.compile(r"^#(\d+) DONE ([\d.]+)s$", re.MULTILINE)


def stage_seconds(log: str) -> list[tuple[str, float]]:
    """Sum the seconds BuildKit spent on the steps of each stage it ran, longest first."""
    stages = {number: stage for number, _, stage, _ in _STEP_HEADER.findall(log)}
    totals: dict[str, float] = {}
    for number, seconds in _STEP_DONE.findall(log):
        if number in stages:
            totals[stages[number]] = totals.get(stages[number], 0.0) + float(seconds)
    return sorted(totals.items(), key=lambda item: -item[1])


def next_steps(
    service: str, up: bool, values: Mapping[str, str], gpu_here: bool
) -> list[list[str]]:
    """The commands to run next that work on this machine: the smoke check on the CPU where no
    GPU reaches containers (checked against CCA where the image holds code compiled for it)."""
    start = (
        ["docker", "compose", "exec", service, "zsh"]
        if up
        else ["docker", "compose", "up", "--detach", service]
    )
    smoke = ["nox", "-s", "smoke", "--", "--service", service]
    cuda = values.get("CUDA_FROM") != "none"
    if not cuda or not gpu_here:
        smoke.append("--allow-cpu")
    if cuda and not gpu_here and values.get("CCA") and service in settings.SOURCE:
        # No GPU here to read the archs from: the audit checks the binaries against CCA.
        smoke += ["--expect-cca", values["CCA"]]
    return [start, smoke, ["invoke", "wheels", "--service", service]]


def summary(
    built: BuildPlan,
    seconds: float,
    size_bytes: int,
    log: str,
    gpu_here: bool = True,
) -> str:
    """Render the lines printed after a successful build."""
    service = built.service
    mine = compose.service_values(service, built.values)
    lines = [
        f"image:       {built.image} ({size_bytes / 1e9:.2f} GB)",
        f"build time:  {runner.format_duration(seconds)}",
        *(
            f"  {stage:<18} {runner.format_duration(spent)}"
            for stage, spent in stage_seconds(log)[:6]
            if spent >= 10
        ),
        f"sccache:     {sccache.summary(log)}",
        *buildchecks.summary_lines(log),
        *extensions.summary_lines(log),
        *(f"jobs:        {line}" for line in dict.fromkeys(_JOBS_LINE.findall(log))),
        f"steps run:   {len(executed_steps(log))} (the others from cache)",
        f"log:         {built.log_path} (the whole output; stage times are kept for estimates)",
        *([f"pushed:      {built.push_ref}"] if built.push_ref else []),
        *(f"cache to:    {spec}" for spec in built.cache_to),
        "next:",
        *(
            f"  {shlex.join(command)}"
            for command in next_steps(service, built.options.up, mine, gpu_here)
        ),
    ]
    return "\n".join(lines)


def check_builder(c, builder: str, *, export_cache: bool) -> None:
    """Refuse, in seconds, a builder that does not exist or cannot export the cache asked for."""
    if not builder and not export_cache:
        return
    inspected = c.run(
        shlex.join(compose.builder_inspect_command(builder)), hide=True, warn=True, in_stream=False
    )
    if inspected is None:
        return
    if inspected.failed and builder:
        raise UserError(
            f"buildx builder '{builder}' does not exist; docker buildx ls lists them, "
            f"docker buildx create --name {builder} --driver docker-container makes one"
        )
    if inspected.failed:
        raise UserError("docker buildx inspect failed; run invoke doctor to see why")
    problem = compose.cache_export_problem(inspected.stdout, builder) if export_cache else None
    if problem:
        raise UserError(problem)


def write_state(built: BuildPlan) -> None:
    """Write the build's Compose override into .torchkiln/, and, for a real build, the record
    of its inputs that `invoke wheels` reuses (a dry run records nothing)."""
    state = built.root / compose.STATE_DIR
    try:
        state.mkdir(exist_ok=True)
        envfile.write_atomic(built.root / built.override_path, built.override_text(), 0o600)
        if not built.dry:
            record = {"service": built.service, "inputs": built.options.inputs()}
            envfile.write_atomic(built.record_path, json.dumps(record, indent=2) + "\n", 0o600)
    except OSError as error:
        raise UserError(
            f"cannot write {state} ({error.strerror}); make the checkout writable for you"
        ) from None


def with_host_ca(built: BuildPlan, environ: Mapping[str, str]) -> BuildPlan:
    """Probe, in seconds, the indexes the build downloads from, and give it the CA bundle a
    TLS-inspecting network needs (saying so in one line), or refuse with the one to add.
    A build from a wheelhouse downloads nothing from an index: nothing to probe."""
    if built.options.wheelhouse:
        return built
    mine = compose.service_values(built.service, built.values)
    decision = doctor.gather_ca(mine, built.ca_bundle, environ)
    if decision.problem:
        raise UserError(f"tls: {decision.problem}; fix: {decision.fix}")
    if decision.note:
        print(decision.note, file=sys.stderr)
    return replace(built, ca_bundle=decision.bundle) if decision.bundle else built


def build_service(c, built: BuildPlan) -> None:
    """Execute a plan (respecting `invoke --dry`) and print the summary."""
    dry = bool(c.config.run.dry)
    built = replace(built, dry=dry)
    # Engine, plugins, disk, and (when the container will start here) GPU runtime and driver:
    # refused in seconds rather than after a long build, by --dry as by the real build.
    mine = compose.service_values(built.service, built.values)
    facts = doctor.require_ready(mine, built.options.up, built.service)
    for note in built.notes:
        print(note)
    if built.service in settings.SOURCE:
        # A spec the index lacks is found here, not after the torch compile.
        extensions.require_available(
            mine,
            ca_bundle=built.ca_bundle,
            wheelhouse=built.contexts.get(compose.WHEELHOUSE_CONTEXT, ""),
        )
    if not dry:
        check_builder(c, built.builder, export_cache=bool(built.cache_to))
    write_state(built)
    print(f"# {built.override_path} (this build's settings, sources and cache):")
    print(built.override_text(), end="")
    if dry:
        with c.cd(str(built.root)):
            for command in (built.build, built.push, built.start if built.options.up else []):
                if command:
                    c.run(shlex.join(command))
        return
    from torchkiln import hostfacts

    if built.service in settings.SOURCE:  # ngc compiles nothing
        history = read_timings(built.root)
        folders = sum(1 for name in built.contexts if name in compose.EXTENSION_CONTEXTS)
        print(estimate(mine, facts.cpus, facts.memory_bytes, history, folders), flush=True)
        for line in farm.check(mine, built.root, facts.cpus, facts.memory_bytes):  # build farm
            print(line, flush=True)
        # A remote cache that does not answer slows nothing down much and fails nothing: warn.
        name, url = sccache.cache_setting(mine)  # compile cache (sccache.py)
        for note in filter(None, [sccache.migration_note(mine)]):
            print(note)
        problem = hostfacts.cache_server_problem(url)
        if problem:
            print(f"warning: {name}: {problem}; building with the local cache only")
    with runner.checkout_lock(built.root, "build"):
        print(f"$ {shlex.join(built.build)}", flush=True)
        started = time.monotonic()
        log = built.root / built.log_path
        result = runner.stream(
            built.build, built.root, build_secrets(built.values, built.root), log
        )
        if result.failed:
            line = failure_line(
                f"docker compose build {built.service}",
                result,
                log=built.log_path,
                ca_bundle=built.ca_bundle,
                host_bundle=host_ca_hint(),
            )
            # A failed extension is named by project, spec or host folder, and step; a
            # certificate's failure keeps the line that names --ca-bundle.
            named = extensions.failure_line(result.output, built.contexts, built.log_path)
            raise UserError(named if named and "--ca-bundle" not in line else line)
        elapsed = time.monotonic() - started
        if built.service in settings.SOURCE:
            date = time.strftime("%Y-%m-%d")
            record_timings(built.root, timing_entries(mine, result.output, elapsed, date))
    with c.cd(str(built.root)):
        if built.push:
            # No stdin: what is typed meanwhile stays for the shell (docker compose exec …).
            pushed = c.run(shlex.join(built.push), warn=True, in_stream=False)
            if pushed is not None and pushed.failed:
                registry = built.push_ref.split("/", 1)[0]
                raise UserError(
                    f"docker push {built.push_ref} failed; run docker login {registry}, and "
                    f"check that REGISTRY_IMAGE names a repository you may push to"
                )
        if built.options.up:
            started_up = c.run(shlex.join(built.start), warn=True, in_stream=False)
            if started_up is not None and started_up.failed:
                raise UserError(up_failure_line(built.service, started_up.stderr))
        inspected = c.run(
            shlex.join(["docker", "image", "inspect", "--format", "{{.Size}}", built.image]),
            hide=True,
            warn=True,
            in_stream=False,
        )
    size = int(inspected.stdout.strip() or 0) if inspected.ok else 0
    gpu_here = facts.nvidia and "cpu.yaml" not in mine["COMPOSE_FILE"]
    print(summary(built, elapsed, size, result.output, gpu_here))


def host_ca_hint() -> str:
    """The CA bundle this host's tools use (its variables, pip's config, else the system's)."""
    import os

    from torchkiln import hostfacts

    found = hostfacts.host_ca_bundles(os.environ)
    return found[0].path if found else hostfacts.system_ca_bundle()


# What pip, curl, git, apt and uv say when a server's certificate chain does not verify.
_CERTIFICATE_ERROR = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSL certificate problem|"
    r"server certificate verification failed|Certificate verification failed|"
    r"invalid peer certificate|self[- ]signed certificate in certificate chain",
    re.IGNORECASE,
)


def failure_line(
    what: str,
    result: runner.Streamed,
    log: str = "",
    ca_bundle: str = "",
    host_bundle: str = "",
) -> str:
    """Say that a build failed, pointing at BuildKit's ERROR lines only when there are some;
    a certificate that did not verify inside the build ends with the --ca-bundle to add
    (`host_bundle`: the one this host's tools use, to try first)."""
    errors = [line for line in result.output.splitlines() if "ERROR" in line]
    where = "the ERROR lines above name the step" if errors else "its last lines above say why"
    if log:
        where += f" (the whole output is in {log})"
    line = f"{what} failed (exit {result.code}); {where}; fix it and run the command again"
    certificate = _CERTIFICATE_ERROR.search(result.output)
    if not certificate:
        return line
    seen = certificate.group(0)
    if ca_bundle:
        return (
            f"{line}; a server's TLS certificate did not verify inside the build ({seen}) with "
            f"the CA bundle given ({ca_bundle}): a TLS-inspecting proxy signs with another CA; "
            f"give its bundle with --ca-bundle FILE (or CA_BUNDLE=FILE in .env)"
        )
    example = (
        f"--ca-bundle {host_bundle}, the one this host uses" if host_bundle else "--ca-bundle FILE"
    )
    return (
        f"{line}; a server's TLS certificate did not verify inside the build ({seen}): behind a "
        f"TLS-inspecting proxy, give the build its CA bundle: {example} (invoke doctor's tls row "
        f"says which one verifies the index)"
    )


def up_failure_line(service: str, stderr: str) -> str:
    """Name the cause of a failed `docker compose up` from what Compose said."""
    text = " ".join(stderr.split())
    if re.search(r"nvidia|could not select device driver|gpu", text, re.IGNORECASE):
        return (
            f"docker compose up {service} failed: no NVIDIA runtime for the GPU reservation; "
            f"install the NVIDIA Container Toolkit, or add compose/cpu.yaml to COMPOSE_FILE "
            f"in .env (invoke env --force does)"
        )
    return f"docker compose up {service} failed: {text[-300:] or 'no message'}"


_STEP_HEADER = re.compile(r"^#(\d+) (\[(?:\S+ )?([a-z0-9_.-]+) \d+/\d+\] (\w+).*)$", re.MULTILINE)
_STEP_CACHED = re.compile(r"^#(\d+) CACHED$", re.MULTILINE)


def executed_steps(log: str) -> list[tuple[str, str]]:
    """List the (stage, instruction) steps BuildKit ran, not took from cache, in a plain log.

    With an imported cache BuildKit may show one step as two vertices, one of them CACHED
    and the other only DONE; a step any of whose vertices was CACHED came from the cache.
    """
    cached = set(_STEP_CACHED.findall(log))
    headers = _STEP_HEADER.findall(log)
    cached_steps = {text for number, text, _, _ in headers if number in cached}
    executed: dict[str, tuple[str, str]] = {}
    for number, text, stage, verb in headers:
        if number not in cached and text not in cached_steps and verb != "FROM":
            executed.setdefault(number, (stage, verb))
    return list(executed.values())

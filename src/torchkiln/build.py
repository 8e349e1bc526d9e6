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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torchkiln import compose, doctor, envfile, gpu, runner, settings
from torchkiln.errors import UserError

IMAGE_SETTING = {"train": "TRAIN_IMAGE_NAME", "full": "FULL_IMAGE_NAME", "ngc": "NGC_IMAGE_NAME"}
_CCACHE_LINE = re.compile(
    r"torchkiln-ccache: (?:\S+ )?hits=(\d+) misses=(\d+)(?: remote_hits=(\d+) remote_errors=(\d+))?"
)
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
        return f"{compose.STATE_DIR}/build-{self.service}.yaml"

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
        )


def settings_flags(
    options: BuildOptions,
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
    extension_specs: list[str] | None = None,
) -> dict[str, str]:
    """Turn the task's flags into settings; --torch picks torchvision unless one is set, and
    --extension items from the index replace EXTENSIONS."""
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
        if item.suffix == "f":
            raise UserError(
                f"CCA '{item}': torchvision, torchaudio and extensions build with "
                f"torch.utils.cpp_extension, which has no family-specific targets; write "
                f"{item.base} (or list each GPU of the family, e.g. '10.0;10.3')"
            )


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
    specs, extension_contexts = compose.split_extensions(options.extensions, cwd)
    flags = settings_flags(options, environ, dotenv, specs)
    values = settings.resolve(flags, environ, dotenv)
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


def ccache_rate(log: str) -> str:
    """Summarise the ccache statistics lines the build steps printed."""
    hits = misses = remote = errors = 0
    for match in _CCACHE_LINE.finditer(log):
        hits += int(match[1])
        misses += int(match[2])
        remote += int(match[3] or 0)
        errors += int(match[4] or 0)
    if hits + misses == 0:
        return "no compiler call (compile steps cached or none)"
    rate = f"{100 * hits / (hits + misses):.0f}% ({hits} hits, {misses} misses)"
    if remote or errors:
        rate += f"; {hits - remote} hits local, {remote} from the team's remote cache"
    if errors:
        rate += f"; WARNING the remote cache failed {errors} times (compiled locally instead)"
    return rate


def build_secrets(values: Mapping[str, str]) -> dict[str, str]:
    """The environment Compose and buildx read the env-sourced build secrets from."""
    return {"PIP_INDEX_TOKEN": values["PIP_INDEX_TOKEN"], "CCACHE_REMOTE": values["CCACHE_REMOTE"]}


# A PyTorch CUDA build for one arch is about 16 core-hours of compiling; each further arch adds
# about a third (the CUDA kernels, not the C++, are compiled once per arch). Disk: about 40 GB
# (sources, objects, ccache, image), and 4 GB more per arch. torchvision/torchaudio and
# extensions take minutes. Rough figures from PyTorch's own CI and user reports: an estimate.
CORE_HOURS_PER_ARCH = (16.0, 5.0)
DISK_GB_PER_ARCH = (40, 4)
GB_PER_JOB = 4


def estimate(values: Mapping[str, str], cpus: int, memory_bytes: int) -> str:
    """Say, before a build starts, roughly how long it will take and how much disk it needs."""
    mode = values["BUILD_MODE"]
    jobs_by_memory = max(1, memory_bytes // (GB_PER_JOB * 1024**3)) if memory_bytes else cpus
    jobs = int(values["MAX_JOBS"] or 0) or max(1, min(cpus or 1, jobs_by_memory))
    if mode != "source":
        extensions = len(values["EXTENSIONS"].split())
        minutes = 5 + (10 if mode == "torch-wheel" else 0) + 5 * extensions
        disk = 20 if mode == "torch-wheel" else 10
        return (
            f"estimate: about {minutes} min and {disk} GB of disk for BUILD_MODE={mode} "
            f"(a rough guide)"
        )
    with_cuda = values["CUDA_FROM"] != "none" and values["CCA"]
    archs = len(gpu.parse_cca(values["CCA"])) if with_cuda else 0
    first, more = CORE_HOURS_PER_ARCH
    core_hours = first / 2 if archs == 0 else first + more * (archs - 1)
    hours = core_hours / jobs
    disk = DISK_GB_PER_ARCH[0] + DISK_GB_PER_ARCH[1] * max(0, archs - 1)
    what = f"{archs} arch{'s' if archs != 1 else ''}" if archs else "the CPU"
    return (
        f"estimate: a PyTorch source build for {what} with {jobs} parallel jobs ({cpus} cores, "
        f"{memory_bytes / 1024**3:.0f} GB memory) takes about {hours:.1f} h the first time and "
        f"needs about {disk} GB of disk; a rebuild reuses ccache (a rough guide, not a promise)"
    )


_STEP_DONE = re.compile(r"^#(\d+) DONE ([\d.]+)s$", re.MULTILINE)


def stage_seconds(log: str) -> list[tuple[str, float]]:
    """Sum the seconds BuildKit spent on the steps of each stage it ran, longest first."""
    stages = {number: stage for number, _, stage, _ in _STEP_HEADER.findall(log)}
    totals: dict[str, float] = {}
    for number, seconds in _STEP_DONE.findall(log):
        if number in stages:
            totals[stages[number]] = totals.get(stages[number], 0.0) + float(seconds)
    return sorted(totals.items(), key=lambda item: -item[1])


def summary(built: BuildPlan, seconds: float, size_bytes: int, log: str) -> str:
    """Render the lines printed after a successful build."""
    service = built.service
    lines = [
        f"image:       {built.image} ({size_bytes / 1e9:.2f} GB)",
        f"build time:  {seconds:.0f} s",
        *(f"  {stage:<18} {spent:.0f} s" for stage, spent in stage_seconds(log)[:6] if spent >= 10),
        f"ccache:      {ccache_rate(log)}",
        *(f"jobs:        {line}" for line in dict.fromkeys(_JOBS_LINE.findall(log))),
        f"steps run:   {len(executed_steps(log))} (the others from cache)",
        *([f"pushed:      {built.push_ref}"] if built.push_ref else []),
        *(f"cache to:    {spec}" for spec in built.cache_to),
        "next:",
        f"  docker compose exec {service} zsh"
        if built.options.up
        else f"  docker compose up --detach {service}",
        f"  nox -s smoke -- --service {service}",
        f"  invoke wheels --service {service}",
    ]
    return "\n".join(lines)


def check_builder(c, builder: str, *, export_cache: bool) -> None:
    """Refuse, in seconds, a builder that does not exist or cannot export the cache asked for."""
    if not builder and not export_cache:
        return
    inspected = c.run(shlex.join(compose.builder_inspect_command(builder)), hide=True, warn=True)
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
    """Write the build's Compose override and the record of its inputs into .torchkiln/."""
    state = built.root / compose.STATE_DIR
    try:
        state.mkdir(exist_ok=True)
        envfile.write_atomic(built.root / built.override_path, built.override_text(), 0o600)
        record = {"service": built.service, "inputs": built.options.inputs()}
        envfile.write_atomic(built.record_path, json.dumps(record, indent=2) + "\n", 0o600)
    except OSError as error:
        raise UserError(
            f"cannot write {state} ({error.strerror}); make the checkout writable for you"
        ) from None


def save_log(built: BuildPlan, output: str) -> None:
    """Keep the build's output beside its override, for invoke logs and for bug reports."""
    log = built.root / compose.STATE_DIR / f"build-{built.service}.log"
    # The build's own output is on the terminal; the copy is a convenience.
    with contextlib.suppress(OSError):
        log.write_text(output, encoding="utf-8")


def build_service(c, built: BuildPlan) -> None:
    """Execute a plan (respecting `invoke --dry`) and print the summary."""
    dry = bool(c.config.run.dry)
    # Engine, plugins, disk, and (when the container will start here) GPU runtime and driver:
    # refused in seconds rather than after a long build, by --dry as by the real build.
    mine = compose.service_values(built.service, built.values)
    facts = doctor.require_ready(mine, built.options.up, built.service)
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
        print(estimate(mine, facts.cpus, facts.memory_bytes), flush=True)
        # A remote cache that does not answer slows nothing down much and fails nothing: warn.
        problem = hostfacts.cache_server_problem(mine["CCACHE_REMOTE"])
        if problem:
            print(f"warning: CCACHE_REMOTE: {problem}; building with the local cache only")
    with runner.checkout_lock(built.root, "build"):
        print(f"$ {shlex.join(built.build)}", flush=True)
        started = time.monotonic()
        result = runner.stream(built.build, built.root, build_secrets(built.values))
        save_log(built, result.output)
        if result.failed:
            raise UserError(failure_line(f"docker compose build {built.service}", result))
        elapsed = time.monotonic() - started
    with c.cd(str(built.root)):
        if built.push:
            pushed = c.run(shlex.join(built.push), warn=True)
            if pushed is not None and pushed.failed:
                registry = built.push_ref.split("/", 1)[0]
                raise UserError(
                    f"docker push {built.push_ref} failed; run docker login {registry}, and "
                    f"check that REGISTRY_IMAGE names a repository you may push to"
                )
        if built.options.up:
            started_up = c.run(shlex.join(built.start), warn=True)
            if started_up is not None and started_up.failed:
                raise UserError(up_failure_line(built.service, started_up.stderr))
        inspected = c.run(
            shlex.join(["docker", "image", "inspect", "--format", "{{.Size}}", built.image]),
            hide=True,
            warn=True,
        )
    size = int(inspected.stdout.strip() or 0) if inspected.ok else 0
    print(summary(built, elapsed, size, result.output))


def failure_line(what: str, result: runner.Streamed) -> str:
    """Say that a build failed, pointing at BuildKit's ERROR lines only when there are some."""
    errors = [line for line in result.output.splitlines() if "ERROR" in line]
    where = "the ERROR lines above name the step" if errors else "its last lines above say why"
    return f"{what} failed (exit {result.code}); {where}; fix it and run the command again"


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

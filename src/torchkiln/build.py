"""`invoke build`: validate in seconds, build the service through Compose, start it, summarise.

`plan` is pure (settings in, commands out); `run` is the thin edge that executes them.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln import compose, doctor, envfile, gpu, settings
from torchkiln.errors import UserError

IMAGE_SETTING = {"train": "TRAIN_IMAGE_NAME", "full": "FULL_IMAGE_NAME", "ngc": "NGC_IMAGE_NAME"}
_CCACHE_LINE = re.compile(r"torchkiln-ccache: hits=(\d+) misses=(\d+)")


@dataclass
class BuildPlan:
    """Everything `invoke build` will do, decided before anything runs."""

    service: str
    values: dict[str, str]
    overrides: dict[str, str]
    contexts: dict[str, str]
    image: str
    no_cache: bool = False
    up: bool = True
    override_path: str = ""
    files: list[str] = field(default_factory=list)
    builder: str = ""
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[str] = field(default_factory=list)
    push_ref: str = ""

    @property
    def build(self) -> list[str]:
        """The build command."""
        files = [*self.files, self.override_path] if self.override_path else None
        return compose.build_command(
            self.service, self.overrides, no_cache=self.no_cache, files=files, builder=self.builder
        )

    @property
    def push(self) -> list[str]:
        """The command that pushes the image to the registry ([] without --push)."""
        return compose.push_command(self.push_ref) if self.push_ref else []

    @property
    def needs_override(self) -> bool:
        """Tell whether the build needs a Compose override file (contexts, cache or tags)."""
        return bool(self.contexts or self.cache_from or self.cache_to or self.push_ref)

    @property
    def start(self) -> list[str]:
        """The command that starts the built service."""
        return compose.up_command(self.service, self.overrides)

    def override_text(self) -> str:
        """The Compose override: named contexts, registry cache, push tag ('' for none)."""
        if not self.needs_override:
            return ""
        return compose.override_text(
            self.service,
            self.contexts,
            cache_from=self.cache_from,
            cache_to=self.cache_to,
            tags=[self.push_ref] if self.push_ref else [],
        )


def _given(name: str, environ: Mapping[str, str], dotenv: Mapping[str, str | None]) -> bool:
    return environ.get(name) is not None or dotenv.get(name) is not None


def resolve_flags(
    cca: str | None,
    torch: str | None,
    ca_bundle: str | None,
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
) -> dict[str, str]:
    """Turn the task's flags into settings; --torch picks torchvision unless one is set."""
    flags: dict[str, str] = {}
    if cca is not None:
        flags["CCA"] = cca
    if torch is not None:
        flags["PYTORCH_VERSION"] = torch
        if not _given("TORCHVISION_VERSION", environ, dotenv):
            flags["TORCHVISION_VERSION"] = gpu.matching_torchvision(torch)
    if ca_bundle is not None:
        flags["CA_BUNDLE"] = ca_bundle
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


def build_cuda(service: str, values: Mapping[str, str]) -> str:
    """The CUDA version the service's image really gets (train uses the Dockerfile default)."""
    setting = settings.BY_NAME["CUDA_VERSION"]
    return values["CUDA_VERSION"] if service in setting.services else setting.default


def validate(service: str, values: Mapping[str, str]) -> None:
    """Refuse, in seconds, what would fail hours into the build."""
    if service not in settings.SOURCE:
        return
    gpu.resolve_versions(
        values["PYTORCH_VERSION"], values["TORCHVISION_VERSION"], values["TORCHAUDIO_VERSION"]
    )
    if values["BUILD_MODE"] == "source":
        gpu.check_cca_for_cuda(values["CCA"], build_cuda(service, values))


def plan(
    root: Path,
    service: str,
    *,
    cca: str | None = None,
    torch: str | None = None,
    sources: Sequence[str] = (),
    wheelhouse: str | None = None,
    ca_bundle: str | None = None,
    no_cache: bool = False,
    up: bool = True,
    builder: str | None = None,
    cache_from: str | bool | None = None,
    cache_to: str | bool | None = None,
    push: bool = False,
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
) -> BuildPlan:
    """Resolve and check every input, and decide the commands; runs nothing."""
    compose.check_service(service)
    flags = resolve_flags(cca, torch, ca_bundle, environ, dotenv)
    if builder is not None:
        flags["BUILDX_BUILDER"] = builder
    values = settings.resolve(flags, environ, dotenv)
    validate(service, values)
    cache_imports, cache_exports, push_ref = registry_plan(
        service, values["REGISTRY_IMAGE"], cache_from, cache_to, push
    )
    contexts: dict[str, str] = {}
    if sources or wheelhouse:
        if service not in settings.SOURCE:
            raise UserError(
                f"--source/--wheelhouse apply to the train and full services, not '{service}'"
            )
        contexts.update(compose.parse_sources(sources, Path.cwd()))
        if wheelhouse:
            contexts[compose.WHEELHOUSE_CONTEXT] = compose.check_wheelhouse(wheelhouse, Path.cwd())
    # Build args only: the builder is a command-line option, the bundle a secret.
    overrides = {
        name: value for name, value in flags.items() if name not in ("CA_BUNDLE", "BUILDX_BUILDER")
    }
    # A --ca-bundle path is relative to where you are; one in .env to the repository.
    bundle = compose.check_ca_bundle(
        values["CA_BUNDLE"], Path.cwd() if "CA_BUNDLE" in flags else root
    )
    if (bundle and bundle != values["CA_BUNDLE"]) or "CA_BUNDLE" in flags:
        # Compose reads relative secret paths from compose/; hand it the absolute path.
        overrides["CA_BUNDLE"] = bundle
    built = BuildPlan(
        service=service,
        values=values,
        overrides=overrides,
        contexts=contexts,
        image=settings.effective(values)[IMAGE_SETTING[service]],
        no_cache=no_cache,
        up=up,
        builder=values["BUILDX_BUILDER"],
        cache_from=cache_imports,
        cache_to=cache_exports,
        push_ref=push_ref,
    )
    if built.needs_override:
        built.files = compose.compose_files(values["COMPOSE_FILE"])
        # A name nobody can guess, created exclusively (0600) by run(), removed after the build.
        name = f"torchkiln-{values['COMPOSE_PROJECT_NAME']}-{service}-{uuid.uuid4().hex}.yaml"
        built.override_path = str(Path(tempfile.gettempdir()) / name)
    return built


def read_dotenv(root: Path) -> dict[str, str | None]:
    """Read the repository's .env, which `invoke build` needs (Compose reads it too)."""
    path = root / compose.ENV_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; run invoke env first (it writes UID, GID, CCA …)")
    return envfile.read(path)


def ccache_rate(log: str) -> str:
    """Summarise the ccache statistics lines the build steps printed."""
    hits = misses = 0
    for match in _CCACHE_LINE.finditer(log):
        hits += int(match[1])
        misses += int(match[2])
    if hits + misses == 0:
        return "no compiler call (compile steps cached or none)"
    return f"{100 * hits / (hits + misses):.0f}% ({hits} hits, {misses} misses)"


def summary(built: BuildPlan, seconds: float, size_bytes: int, log: str) -> str:
    """Render the lines printed after a successful build."""
    service = built.service
    lines = [
        f"image:       {built.image} ({size_bytes / 1e9:.2f} GB)",
        f"build time:  {seconds:.0f} s",
        f"ccache:      {ccache_rate(log)}",
        f"steps run:   {len(executed_steps(log))} (the others from cache)",
        *([f"pushed:      {built.push_ref}"] if built.push_ref else []),
        *(f"cache to:    {spec}" for spec in built.cache_to),
        "next:",
        f"  docker compose exec {service} zsh"
        if built.up
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


def run(c, root: Path, built: BuildPlan) -> None:
    """Execute a plan with invoke's context (respecting `invoke --dry`) and print the summary."""
    dry = bool(c.config.run.dry)
    if not dry:
        # Engine, plugins, disk, and (when the container will start here) GPU runtime and
        # driver: refused in seconds rather than after a long build.
        cuda = build_cuda(built.service, built.values)
        doctor.require_ready({**built.values, "CUDA_VERSION": cuda}, built.up)
        check_builder(c, built.builder, export_cache=bool(built.cache_to))
    if built.override_path:
        text = built.override_text()
        if not dry:
            fd = os.open(built.override_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        print(f"# {built.override_path} (Compose override for this build):\n{text}", end="")
    started = time.monotonic()
    with c.cd(str(root)):
        try:
            result = c.run(shlex.join(built.build), warn=True)
        finally:
            if built.override_path:  # only the build reads it; up/shell use plain Compose
                Path(built.override_path).unlink(missing_ok=True)
        if result is not None and result.failed:
            raise UserError(
                f"docker compose build {built.service} failed (exit {result.exited}); the "
                f"ERROR lines above name the step; fix it and run invoke build again"
            )
        elapsed = time.monotonic() - started
        if built.push:
            pushed = c.run(shlex.join(built.push), warn=True)
            if pushed is not None and pushed.failed:
                registry = built.push_ref.split("/", 1)[0]
                raise UserError(
                    f"docker push {built.push_ref} failed; run docker login {registry}, and "
                    f"check that REGISTRY_IMAGE names a repository you may push to"
                )
        if built.up:
            started_up = c.run(shlex.join(built.start), warn=True)
            if started_up is not None and started_up.failed:
                raise UserError(
                    f"docker compose up {built.service} failed; with no NVIDIA runtime, add "
                    f"compose/cpu.yaml to COMPOSE_FILE in .env (invoke env --force does)"
                )
    if dry:
        return
    inspected = c.run(
        shlex.join(["docker", "image", "inspect", "--format", "{{.Size}}", built.image]),
        hide=True,
        warn=True,
    )
    size = int(inspected.stdout.strip() or 0) if inspected.ok else 0
    print(summary(built, elapsed, size, result.stdout + result.stderr))


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

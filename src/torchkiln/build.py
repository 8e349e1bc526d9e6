"""`invoke build`: validate in seconds, build the service through Compose, start it, summarise.

`plan` is pure (settings in, commands out); `run` is the thin edge that executes them.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import time
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

    @property
    def build(self) -> list[str]:
        """The build command."""
        files = [*self.files, self.override_path] if self.override_path else None
        return compose.build_command(
            self.service, self.overrides, no_cache=self.no_cache, files=files
        )

    @property
    def start(self) -> list[str]:
        """The command that starts the built service."""
        return compose.up_command(self.service, self.overrides)

    def override_text(self) -> str:
        """The Compose override adding the named contexts ('' when there are none)."""
        return compose.override_text(self.service, self.contexts) if self.contexts else ""


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
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
) -> BuildPlan:
    """Resolve and check every input, and decide the commands; runs nothing."""
    compose.check_service(service)
    flags = resolve_flags(cca, torch, ca_bundle, environ, dotenv)
    values = settings.resolve(flags, environ, dotenv)
    validate(service, values)
    contexts: dict[str, str] = {}
    if sources or wheelhouse:
        if service not in settings.SOURCE:
            raise UserError(
                f"--source/--wheelhouse apply to the train and full services, not '{service}'"
            )
        contexts.update(compose.parse_sources(sources, Path.cwd()))
        if wheelhouse:
            contexts[compose.WHEELHOUSE_CONTEXT] = compose.check_wheelhouse(wheelhouse, Path.cwd())
    overrides = {name: value for name, value in flags.items() if name != "CA_BUNDLE"}
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
    )
    if contexts:
        built.files = compose.compose_files(values["COMPOSE_FILE"])
        built.override_path = str(
            Path(tempfile.gettempdir())
            / f"torchkiln-{values['COMPOSE_PROJECT_NAME']}-{service}-contexts.yaml"
        )
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
        "next:",
        f"  docker compose exec {service} zsh"
        if built.up
        else f"  docker compose up --detach {service}",
        f"  nox -s smoke -- --service {service}",
        f"  invoke wheels --service {service}",
    ]
    return "\n".join(lines)


def run(c, root: Path, built: BuildPlan) -> None:
    """Execute a plan with invoke's context (respecting `invoke --dry`) and print the summary."""
    dry = bool(c.config.run.dry)
    if not dry:
        # Engine, plugins, disk, and (when the container will start here) GPU runtime and
        # driver: refused in seconds rather than after a long build.
        cuda = build_cuda(built.service, built.values)
        doctor.require_ready({**built.values, "CUDA_VERSION": cuda}, built.up)
    if built.override_path:
        text = built.override_text()
        Path(built.override_path).write_text(text, encoding="utf-8")
        print(f"# {built.override_path} (named build contexts):\n{text}", end="")
    started = time.monotonic()
    with c.cd(str(root)):
        result = c.run(shlex.join(built.build), warn=True)
        if result is not None and result.failed:
            raise UserError(
                f"docker compose build {built.service} failed (exit {result.exited}); the "
                f"ERROR lines above name the step; fix it and run invoke build again"
            )
        elapsed = time.monotonic() - started
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


_STEP_HEADER = re.compile(r"^#(\d+) \[(?:\S+ )?([a-z0-9_.-]+) \d+/\d+\] (\w+)", re.MULTILINE)
_STEP_CACHED = re.compile(r"^#(\d+) CACHED$", re.MULTILINE)


def executed_steps(log: str) -> list[tuple[str, str]]:
    """List the (stage, instruction) steps BuildKit ran, not took from cache, in a plain log."""
    headers = {number: (stage, verb) for number, stage, verb in _STEP_HEADER.findall(log)}
    cached = set(_STEP_CACHED.findall(log))
    return [step for number, step in headers.items() if number not in cached and step[1] != "FROM"]

"""A build's plan: everything `invoke build` will do, decided from its checked inputs.

Pure: `make` turns `inputs.BuildInputs` into a `BuildPlan` (the build args, named contexts, the
registry cache and push reference, the image) whose properties are the command lines; nothing
runs here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln import compose, gpu, settings
from torchkiln.checkrows import Row
from torchkiln.inputs import BuildInputs, BuildOptions

IMAGE_SETTING = {"train": "TRAIN_IMAGE_NAME", "full": "FULL_IMAGE_NAME", "ngc": "NGC_IMAGE_NAME"}


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
    # What the probes before the build found against it (the indexes' TLS), said at once with
    # the engine's reasons.
    preflight: list[Row] = field(default_factory=list)
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


def build_arg_values(
    service: str, values: Mapping[str, str], local_extensions: int = 0
) -> dict[str, str]:
    """Every build arg of a service with the value the checks saw, plus the derived ones: the
    CCA's arch lists, and whether there are extensions to build."""
    mine = settings.service_values(service, values)
    args = {name: mine[name] for name in settings.build_args(service)}
    if args.get("PIP_INDEX_URL"):
        # Its password travels as the secret pip_index_token (build_secrets), never as an arg.
        args["PIP_INDEX_URL"] = compose.index_url(args["PIP_INDEX_URL"]).without_password().text()
    if "CCA" in args:
        # A CPU image (CUDA_FROM=none) compiles no GPU code: no arch lists, whatever CCA says.
        args.update(gpu.cca_build_args(args["CCA"] if args["CUDA_FROM"] != "none" else ""))
        args["BUILD_EXTENSIONS"] = "1" if args["EXTENSIONS"] or local_extensions else "0"
        args.update(compile_args(args))
    return args


def compile_args(args: Mapping[str, str]) -> dict[str, str]:
    """COMPILED: whether anything is compiled (then the closure and the repair stages run). The
    compile steps that run at once share MAX_JOBS among themselves, at run time (jobshare): no
    build arg counts them, so adding an extension never re-runs a cached torchvision step."""
    extensions = args["BUILD_EXTENSIONS"] == "1"
    compiles_torch_family = args["BUILD_MODE"] != "wheels"
    return {"COMPILED": "1" if compiles_torch_family or extensions else "0"}


def make(given: BuildInputs) -> BuildPlan:
    """Decide a build's commands from its checked inputs."""
    service, values = given.service, given.values
    return BuildPlan(
        root=given.root,
        options=given.options,
        values=values,
        build_args=build_arg_values(service, values, given.extension_folders),
        contexts=given.contexts,
        ca_bundle=given.ca_bundle,
        image=settings.effective(values)[IMAGE_SETTING[service]],
        files=compose.compose_files(values["COMPOSE_FILE"]),
        cache_from=given.cache_from,
        cache_to=given.cache_to,
        push_ref=given.push_ref,
        notes=given.notes,
    )

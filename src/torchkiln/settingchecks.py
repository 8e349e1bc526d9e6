"""Doctor's rows about the settings: `.env` read and resolved, CUDA's route, CCA, the team's
compile cache, a password in `.env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from torchkiln import gpu, settings
from torchkiln.checkrows import Row
from torchkiln.errors import UserError


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
    from torchkiln import urls

    if not url:
        return None
    mode = "read-only" if urls.parse_ccache_remote(url).read_only else "read-write"
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

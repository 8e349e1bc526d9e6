"""Doctor's rows about the settings: `.env` read and resolved, CUDA's route, CCA, the team's
compile cache, a password in `.env`.
"""

from __future__ import annotations

import re
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
    # The settings that could not be read or are refused, each with its .env line (0: it came
    # from the environment): the rows that depend on one are not judged.
    broken: Mapping[str, int] = field(default_factory=dict)

    def known(self) -> Mapping[str, str]:
        """The settings to judge by: all of them, or those that are valid on their own."""
        return self.values if self.values is not None else self.partial

    def judged(self) -> EnvState:
        """This state with every setting a row may judge by: those read, valid on their own,
        and the defaults of those not set (what the build would take); the broken ones keep
        their defaults too, and the rows that depend on them say so (`not_checked`)."""
        if self.values is not None:
            return self
        defaults = settings.normalize({item.name: item.default for item in settings.SETTINGS})
        return replace(self, values={**defaults, **self.partial})


# The settings each row of doctor judges by (with those their values refer to, ${NAME}).
ROW_SETTINGS = {
    "nvidia runtime": ("COMPOSE_FILE",),
    "cuda": ("CUDA_FROM", "CUDA_VERSION", "BUILD_MODE"),
    "driver": ("CUDA_FROM", "CUDA_VERSION"),
    "cca": ("CCA", "CUDA_FROM", "CUDA_VERSION", "BUILD_MODE"),
    "base images": ("BUILD_IMAGE", "TRAIN_IMAGE", "COMPOSE_FILE", "BUILD_MODE", "CCA"),
    "tls": ("PIP_INDEX_URL", "TORCH_INDEX_URL", "CA_BUNDLE", "PIP_INDEX_TOKEN"),
    "python": ("PYTHON_VERSION", "BUILD_IMAGE", "TRAIN_IMAGE", "PIP_INDEX_URL", "CA_BUNDLE"),
    "compile cache": ("COMPILE_CACHE", "CCACHE_REMOTE"),
    "index": (
        *("TORCH_INDEX_URL", "PIP_INDEX_URL", "PIP_INDEX_TOKEN", "CA_BUNDLE", "BUILD_MODE"),
        *("CUDA_FROM", "CUDA_VERSION", "PYTORCH_VERSION", "PYTHON_VERSION"),
    ),
    "disk": ("BUILD_MODE", "MIN_FREE_DISK_GB"),
}


def row_settings(check: str) -> set[str]:
    """The settings a row judges by, with the settings their defaults refer to."""
    names = set(ROW_SETTINGS.get(check.split(" (", 1)[0], ()))
    for name in list(names):
        default = settings.BY_NAME[name].default if name in settings.BY_NAME else ""
        names.update(settings.references(default))
    return names


def not_checked(rows: list[Row], env: EnvState) -> list[Row]:
    """Replace each row that judges by a setting that could not be read with one saying so and
    where; every other row stays as it is."""
    kept = []
    for row in rows:
        broken = sorted(
            (line, name) for name, line in env.broken.items() if name in row_settings(row.check)
        )
        if not broken:
            kept.append(row)
            continue
        line, name = broken[0]
        where = f".env line {line} has an error" if line else "the environment's value is wrong"
        detail = f"not checked: {where} ({name}); fix it as the .env row says"
        kept.append(Row(row.check, "warn", detail))
    return kept


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


def check_compile_cache(url: str, problem: str, name: str = "COMPILE_CACHE") -> Row | None:
    """Judge the team's compile cache (None when COMPILE_CACHE, or the older CCACHE_REMOTE read
    as it, is unset): a server that does not answer only warns, since sccache then compiles
    with the local cache."""
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


def check_env_private(exposed: bool) -> Row | None:
    """Warn when .env holds a credential and others may read it."""
    if not exposed:
        return None
    return Row(
        ".env secret",
        "warn",
        ".env holds a password (or token) and other users of this machine can read it",
        "chmod 600 .env (invoke build does it when it reads .env)",
    )


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
    dotenv: Mapping[str, str | None] | None,
    environ: Mapping[str, str],
    problem: str = "",
    lines: Mapping[str, int] | None = None,
    unreadable: Mapping[str, int] | None = None,
) -> EnvState:
    """Resolve settings from a read .env (None when absent) into an EnvState. `lines`: the .env
    line that sets each name; `unreadable`: the names of lines .env could not give (with
    `problem`, why), the others then read from `dotenv`."""
    from torchkiln import envfile

    lines = lines or {}
    given = settings.layered(environ, dotenv or {})
    if problem:
        partial = valid_on_their_own(given)
        broken = {name: lines.get(name, 0) for name in given if name not in partial}
        return EnvState(
            present=True,
            values=None,
            problem=problem,
            partial=partial,
            broken={**broken, **(unreadable or {})},
        )
    if dotenv is not None and not dotenv:
        return EnvState(present=True, values=None, problem=".env sets nothing")
    try:
        values = settings.resolve({}, environ, dotenv or {})
    except UserError as error:
        partial = valid_on_their_own(given)
        # Refused on its own, or named by a check of several settings (UID with USR …).
        named = {
            name for name in given if name not in partial or re.search(rf"\b{name}\b", str(error))
        }
        return EnvState(
            present=dotenv is not None,
            values=None,
            problem=str(error),
            partial=partial,
            broken={
                name: lines.get(name, 0) if name not in environ else 0
                for name in named
                if name in settings.BY_NAME
            },
        )
    warnings = tuple(envfile.unknown_names(dotenv or {}))
    return EnvState(present=dotenv is not None, values=values, warnings=warnings)


def valid_on_their_own(given: Mapping[str, str]) -> dict[str, str]:
    """The given settings that pass their own check, normalised (the others left out)."""
    valid: dict[str, str] = {}
    for name, given_value in given.items():
        setting = settings.BY_NAME.get(name)
        try:  # normalising may refuse too (a CCA that is no compute capability)
            value = settings.normalize({name: given_value})[name]
            if setting and setting.check:
                setting.check(name, value)
        except UserError:
            continue
        valid[name] = value
    return valid

"""The settings model: every variable a user can set, declared once with default and check.

`.env`, `env.example`, the build args Compose passes and the Dockerfile ARG defaults are all
derived from (or tested against) the table below. Each value is normalised once here (spaces
stripped, CCA spelled one way) and validated in that form, and that form is what reaches `.env`,
the build args, the image labels and BUILD-INFO.json. Precedence, highest first:
command-line flag > process environment > `.env` > default; `layered` is the one place that
applies it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torchkiln import sccache, urls
from torchkiln.errors import UserError
from torchkiln.inimage import archs

SERVICES = ("train", "full", "ngc")
SOURCE = ("train", "full")


def _strip(value: str) -> str:
    return value.strip()


@dataclass(frozen=True)
class Setting:
    """One user-settable variable."""

    name: str
    default: str
    meaning: str
    group: str
    # Services whose image build receives it as a build arg; () for run-time-only settings.
    services: tuple[str, ...] = ()
    check: Callable[[str, str], None] | None = None
    # Turns any accepted spelling into the one form that is validated and used.
    normalize: Callable[[str], str] = _strip


def _pattern(regex: str, form: str) -> Callable[[str, str], None]:
    compiled = re.compile(regex)

    def check(name: str, value: str) -> None:
        if not compiled.fullmatch(value):
            raise UserError(f"{name} '{value}' is not valid; write it as {form}")

    return check


def _optional(check: Callable[[str, str], None]) -> Callable[[str, str], None]:
    def maybe(name: str, value: str) -> None:
        if value:
            check(name, value)

    return maybe


def _cca(value: str) -> str:
    try:
        return archs.normalize_cca(value)
    except archs.CCAError as error:
        raise UserError(str(error)) from None


# One EXTENSIONS item (and one `--extension` that is not a folder): a source distribution.
EXTENSION_SPEC = r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*"


def _extensions(value: str) -> str:
    # One spelling: space-separated, each item once.
    return " ".join(dict.fromkeys(item for item in re.split(r"[\s,;]+", value) if item))


def project_key(name: str) -> str:
    """A Python project's name as the index compares it (PEP 503): Torch_Scatter = torch-scatter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _extension_specs(name: str, value: str) -> None:
    if not value:
        return
    _pattern(
        rf"{EXTENSION_SPEC}( {EXTENSION_SPEC})*",
        "name==version items separated by spaces, e.g. torch-scatter==2.1.2",
    )(name, value)
    seen: dict[str, str] = {}
    for spec in value.split():
        key = project_key(spec.split("==", 1)[0])
        if key in seen:
            raise UserError(
                f"{name} names {seen[key].split('==', 1)[0]} twice ({seen[key]} and {spec}); one "
                f"image holds one version of a project: keep one"
            )
        seen[key] = spec


def _choice(*choices: str) -> Callable[[str, str], None]:
    def check(name: str, value: str) -> None:
        if value not in choices:
            raise UserError(f"{name} '{value}' is not one of {', '.join(choices)}; pick one")

    return check


# useradd accepts ids up to 2^32 - 2; (uid_t) -1 means "no id" to the kernel.
ID_MAX = 2**32 - 2


def _id(name: str, value: str) -> None:
    if not re.fullmatch(r"\d{1,10}", value) or int(value) > ID_MAX:
        raise UserError(
            f"{name} '{value}' is not a user or group id; write a number from 0 to {ID_MAX}, "
            f"such as 1000 (see the output of id)"
        )


def _id_form(value: str) -> str:
    value = value.strip()
    return str(int(value)) if value.isdigit() else value  # '01000' is id 1000


# Linux user/group names as useradd accepts them; lower-case so they double as project names.
_NAME = _pattern(r"[a-z_][a-z0-9_-]{0,31}", "lower-case letters, digits, '_' or '-' (e.g. alice)")
_VERSION3 = _pattern(r"\d+\.\d+\.\d+", "three numbers, e.g. 2.14.1")
_PROJECT = _pattern(r"[a-z0-9][a-z0-9_-]*", "lower-case letters, digits, '_' or '-'")
_IMAGE = _pattern(r"[a-z0-9][a-z0-9._/:@-]*(\$\{[A-Z_]+\}[a-z0-9._/:@-]*)*", "repo/name:tag")
_BOOL = _choice("0", "1")


def _url(form: str, *, password: str = "") -> Callable[[str, str], None]:
    """Check a URL setting with the parser the build uses; `password` says why this one may
    hold none (empty: its password is split off into a BuildKit secret)."""

    def check(name: str, value: str) -> None:
        url = urls.parse(name, value, form=form)
        if password and url.password:
            raise UserError(
                f"{name} '{url.text(masked=True)}' holds a password, which would be stored in "
                f"the image's history (a build arg); {password}"
            )

    return check


def _compile_cache(name: str, value: str) -> None:
    sccache.parse_compile_cache(value, name)


_URL_FORM = urls.normalizer()

SETTINGS: tuple[Setting, ...] = (
    # --- the container user -------------------------------------------------------------
    Setting(
        "UID",
        "1000",
        "container user's id (your host id, so files you create are yours)",
        "user",
        SERVICES,
        _id,
        _id_form,
    ),
    Setting("GID", "1000", "container user's group id", "user", SERVICES, _id, _id_form),
    Setting("USR", "user", "container user name (root when UID is 0)", "user", SERVICES, _NAME),
    Setting("GRP", "user", "container user's group name", "user", SERVICES, _NAME),
    Setting(
        "PASSWORDLESS_SUDO",
        "0",
        "1 gives the container user sudo without a password",
        "user",
        SERVICES,
        _BOOL,
    ),
    Setting(
        "TZ",
        "UTC",
        "time zone inside the containers",
        "user",
        (),
        _pattern(r":?[A-Za-z0-9_+\-/]+", "a zone name such as Europe/Berlin or UTC"),
    ),
    Setting(
        "PROJECT_ROOT",
        "/opt/project",
        "where the repository is mounted in the container",
        "user",
        SERVICES,
        _pattern(r"/[A-Za-z0-9_./-]*", "an absolute path such as /opt/project"),
    ),
    # --- Compose ------------------------------------------------------------------------
    Setting(
        "COMPOSE_FILE",
        "compose/compose.yaml",
        "compose files, ':'-separated (invoke env adds compose/cpu.yaml without a GPU runtime)",
        "compose",
    ),
    Setting(
        "COMPOSE_PROJECT_NAME",
        "torchkiln",
        "Compose project name (lower-case); its images carry it as a label for invoke clean",
        "compose",
        SERVICES,
        _PROJECT,
    ),
    Setting(
        "SHM_SIZE",
        "16gb",
        "shared memory for data-loader workers (/dev/shm)",
        "compose",
        (),
        _pattern(r"\d+[kmg]?b?", "a size such as 16gb"),
    ),
    Setting(
        "TRAIN_IMAGE_NAME",
        "torchkiln/train:latest",
        "tag of the train image",
        "compose",
        (),
        _IMAGE,
    ),
    Setting(
        "FULL_IMAGE_NAME", "torchkiln/full:latest", "tag of the full image", "compose", (), _IMAGE
    ),
    Setting(
        "NGC_IMAGE_NAME", "torchkiln/ngc:latest", "tag of the ngc image", "compose", (), _IMAGE
    ),
    Setting(
        "REGISTRY_IMAGE",
        "",
        "registry repository for invoke build --push/--cache-to/--cache-from "
        "(e.g. registry.example.com/team/torchkiln): image :<service>, cache :<service>-cache",
        "compose",
        (),
        _optional(
            _pattern(
                r"[a-z0-9][a-z0-9.-]*(:\d+)?(/[a-z0-9][a-z0-9._-]*)+",
                "a repository without a tag, e.g. registry.example.com/team/torchkiln",
            )
        ),
    ),
    Setting(
        "BUILDX_BUILDER",
        "",
        "buildx builder that runs the builds (docker buildx ls); empty: the current one",
        "compose",
        (),
        _optional(_pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "a name from docker buildx ls")),
    ),
    # --- what is built ------------------------------------------------------------------
    Setting(
        "CCA",
        "",
        "GPU compute capabilities to build for: 8.6, '8.6;9.0', 9.0a, 10.0f, 12.0+PTX",
        "gpu",
        SOURCE,
        None,
        _cca,
    ),
    Setting(
        "BUILD_MODE",
        "source",
        "source: compile PyTorch, torchvision, torchaudio for CCA; torch-wheel: official torch "
        "wheel, torchvision/torchaudio compiled for CCA (minutes); wheels: official wheels only",
        "build",
        SOURCE,
        _choice("source", "torch-wheel", "wheels"),
    ),
    Setting(
        "PYTORCH_VERSION",
        "2.14.1",
        "torch release (git tag v<version>)",
        "build",
        SOURCE,
        _VERSION3,
    ),
    Setting(
        "TORCHVISION_VERSION",
        "0.29.1",
        "torchvision release matching torch",
        "build",
        SOURCE,
        _VERSION3,
    ),
    Setting(
        "TORCHAUDIO_VERSION",
        "",
        "torchaudio release; empty: not installed (maintenance)",
        "build",
        SOURCE,
        _optional(_VERSION3),
    ),
    Setting(
        "MAX_JOBS",
        "",
        "parallel compile jobs; empty: the cores, at most one per 6 GB of memory",
        "build",
        SOURCE,
        _optional(_pattern(r"[1-9]\d{0,3}", "a positive number such as 8")),
    ),
    Setting(
        "COMPILE_CACHE",
        "",
        "a compile cache your team shares (sccache's second level after the local one): "
        "redis://HOST:PORT, memcached://HOST:PORT, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or "
        "webdav+https://HOST/PATH, |read-only for CI runners; a BuildKit secret (a password may "
        "be in it), never a build arg",
        "build",
        (),
        _optional(_compile_cache),
        urls.normalizer(schemes=sccache.CACHE_SCHEMES, attributes=True),
    ),
    Setting(
        "CCACHE_REMOTE",
        "",
        "the former name of COMPILE_CACHE (read as COMPILE_CACHE when that is unset)",
        "build",
        (),
        _optional(_compile_cache),
        urls.normalizer(schemes=("redis", "http", "https"), attributes=True),
    ),
    Setting(
        "BUILD_FARM",
        "",
        "the build farm's scheduler, http://HOST:10600 (invoke farm up, farm join): every "
        "compile of every build step is offered to it; a BuildKit secret, never a build arg",
        "build",
        (),
        _optional(sccache.check_farm),
        _URL_FORM,
    ),
    Setting(
        "BUILD_FARM_TOKEN",
        "",
        "the build farm's client token, a BuildKit secret (empty: the one invoke farm up|join "
        "wrote under .torchkiln/farm/)",
        "build",
    ),
    Setting(
        "FARM_IMAGE",
        "debian:bookworm-slim",
        "base image of the build farm's scheduler and servers (invoke farm up, farm join): any "
        "Debian or Ubuntu image",
        "build",
        (),
        _IMAGE,
    ),
    Setting(
        "FARM_IMAGE_NAME",
        "torchkiln/farm:latest",
        "name of the build farm's image",
        "build",
        (),
        _IMAGE,
    ),
    Setting(
        "FARM_ADDRESS",
        "0.0.0.0",
        "host address the farm's scheduler and servers listen on (other machines join and send "
        "compiles there)",
        "build",
        (),
        _pattern(r"[0-9a-fA-F.:]+", "an IP address such as 0.0.0.0"),
    ),
    Setting(
        "FARM_SCHEDULER_PORT",
        "10600",
        "port of the build farm's scheduler",
        "build",
        (),
        _pattern(r"[1-9]\d{0,4}", "a port such as 10600"),
    ),
    Setting(
        "FARM_SERVER_PORT",
        "10501",
        "port of this machine's build server",
        "build",
        (),
        _pattern(r"[1-9]\d{0,4}", "a port such as 10501"),
    ),
    Setting(
        "FARM_ADVERTISE",
        "",
        "the address clients reach a joined build server at (empty: the container's own, for a "
        "server on the farm's machine); invoke farm join --address sets it",
        "build",
        (),
        _optional(_pattern(r"[0-9a-fA-F.:]+|[A-Za-z0-9.-]+", "an address such as 10.0.0.7")),
    ),
    Setting(
        "CCACHE_SERVER_IMAGE",
        "redis:7",
        "image of the compile cache server (docker compose --profile cache up -d compile-cache)",
        "build",
        (),
        _IMAGE,
    ),
    Setting(
        "CCACHE_SERVER_ADDRESS",
        "172.17.0.1",
        "host address the compile cache server listens on: the docker0 bridge's, which build "
        "steps reach (they cannot reach 127.0.0.1)",
        "build",
        (),
        _pattern(r"[0-9a-fA-F.:]+", "an IP address such as 172.17.0.1"),
    ),
    Setting(
        "CCACHE_SERVER_PORT",
        "6379",
        "port of the compile cache server",
        "build",
        (),
        _pattern(r"[1-9]\d{0,4}", "a port such as 6379"),
    ),
    Setting(
        "CCACHE_SERVER_MEMORY",
        "8gb",
        "the most memory the compile cache server keeps (least recently used entries go first)",
        "build",
        (),
        _pattern(r"\d+[kmg]?b?", "a size such as 8gb"),
    ),
    Setting(
        "MIN_FREE_DISK_GB",
        "",
        "free GB at Docker's root below which a build is refused; empty: by BUILD_MODE "
        "(source 40, torch-wheel 20, wheels 10)",
        "build",
        (),
        _optional(_pattern(r"\d{1,5}", "a number of GB such as 20")),
    ),
    Setting(
        "CCACHE_MAXSIZE",
        "40G",
        "size of the compile cache (a PyTorch build fills about 25 GB)",
        "build",
        SOURCE,
        _pattern(r"\d+(\.\d+)?[KMGT]i?", "a size such as 40G"),
    ),
    Setting(
        "EXTENSIONS",
        "",
        "CUDA extensions compiled for CCA against the image's torch: source distributions from "
        "the index as name==version, space-separated (e.g. torch-scatter==2.1.2)",
        "build",
        SOURCE,
        _extension_specs,
        _extensions,
    ),
    Setting(
        "EXTENSION_ARCHS",
        "cca",
        "what extensions are compiled for: cca, exactly CCA (a project's own -gencode flags and "
        "arch variables replaced); as-is, the project's own flags (often many archs: longer "
        "builds, bigger wheels)",
        "build",
        SOURCE,
        _choice("cca", "as-is"),
    ),
    Setting("USE_CUDNN", "1", "build with cuDNN", "build", SOURCE, _BOOL),
    Setting("USE_NCCL", "1", "build with NCCL (multi-GPU)", "build", SOURCE, _BOOL),
    Setting(
        "USE_FLASH_ATTENTION",
        "1",
        "build FlashAttention kernels (slow to compile)",
        "build",
        SOURCE,
        _BOOL,
    ),
    Setting(
        "USE_MEM_EFF_ATTENTION",
        "1",
        "build memory-efficient attention kernels",
        "build",
        SOURCE,
        _BOOL,
    ),
    Setting("DEBUG", "0", "1 builds PyTorch with debug symbols", "build", ("full",), _BOOL),
    Setting(
        "BUILD_MAGMA",
        "0",
        "1 compiles magma (GPU linear algebra) for CCA and builds PyTorch with it (USE_MAGMA)",
        "build",
        SOURCE,
        _BOOL,
    ),
    Setting(
        "MAGMA_VERSION",
        "2.10.0",
        "magma release built when BUILD_MAGMA=1 (git tag v<version>)",
        "build",
        SOURCE,
        _VERSION3,
    ),
    # --- the stack under it (the full service exposes these) ----------------------------
    Setting(
        "CUDA_FROM",
        "image",
        "where CUDA comes from: image (the nvidia/cuda devel base), pypi (NVIDIA's wheels "
        "from the Python index, on any apt-based base), none (CPU only: BUILD_MODE=wheels)",
        "stack",
        SOURCE,
        _choice("image", "pypi", "none"),
    ),
    Setting(
        "CUDA_VERSION",
        "13.0.2",
        "CUDA toolkit of the nvidia/cuda base image",
        "stack",
        ("full",),
        _VERSION3,
    ),
    Setting(
        "CUDNN_FLAVOR",
        "cudnn-",
        "'cudnn-' for the image with cuDNN, '' without",
        "stack",
        ("full",),
        _choice("cudnn-", ""),
    ),
    Setting(
        "LINUX_DISTRO",
        "ubuntu",
        "distro of the nvidia/cuda base image",
        "stack",
        ("full",),
        _pattern(r"[a-z]+", "a distro name such as ubuntu"),
    ),
    Setting(
        "DISTRO_VERSION",
        "24.04",
        "distro release of the base image",
        "stack",
        ("full",),
        _pattern(r"\d+(\.\d+)?", "a release such as 24.04"),
    ),
    Setting(
        "PYTHON_VERSION",
        "3.12",
        "Python of the image's virtual environment",
        "stack",
        # train passes it too: a TRAIN_IMAGE whose distro has another python3 needs it.
        SOURCE,
        _pattern(r"3\.\d{1,2}", "3.12"),
    ),
    Setting(
        "BUILD_IMAGE",
        "nvidia/cuda:${CUDA_VERSION}-${CUDNN_FLAVOR}devel-${LINUX_DISTRO}${DISTRO_VERSION}",
        "base image of the build stages (any apt-based image)",
        "stack",
        SOURCE,
        _IMAGE,
    ),
    Setting(
        "TRAIN_IMAGE",
        "nvidia/cuda:${CUDA_VERSION}-${CUDNN_FLAVOR}devel-${LINUX_DISTRO}${DISTRO_VERSION}",
        "base image of the runtime stage (any apt-based image)",
        "stack",
        SOURCE,
        _IMAGE,
    ),
    Setting(
        "NGC_YEAR",
        "25",
        "NGC PyTorch release year (nvcr.io/nvidia/pytorch:YY.MM-py3)",
        "stack",
        ("ngc",),
        _pattern(r"\d{2}", "two digits, e.g. 25"),
    ),
    Setting(
        "NGC_MONTH",
        "10",
        "NGC PyTorch release month",
        "stack",
        ("ngc",),
        _pattern(r"\d{2}", "two digits, e.g. 10"),
    ),
    Setting(
        "NGC_IMAGE",
        "nvcr.io/nvidia/pytorch:${NGC_YEAR}.${NGC_MONTH}-py3",
        "base image of the ngc service (any image with Python and torch)",
        "stack",
        ("ngc",),
        _IMAGE,
    ),
    # --- downloads ----------------------------------------------------------------------
    Setting(
        "APT_MIRROR",
        "",
        "Debian/Ubuntu mirror URL replacing the image's apt sources",
        "network",
        SERVICES,
        _optional(_url("https://HOST/ubuntu", password="use a mirror that needs no password")),
        _URL_FORM,
    ),
    Setting(
        "PIP_INDEX_URL",
        "",
        "Python package index URL (empty: pip's default); a password in it "
        "(https://USER:PASSWORD@HOST/simple) travels to the build as the BuildKit secret "
        "pip_index_token, never as a build arg",
        "network",
        SERVICES,
        _optional(_url("https://HOST/simple")),
        _URL_FORM,
    ),
    Setting(
        "PIP_INDEX_TOKEN",
        "",
        "token for PIP_INDEX_URL's index, a BuildKit secret (set it in the process "
        "environment; in .env only if .env stays private)",
        "network",
    ),
    Setting(
        "TORCH_INDEX_URL",
        "",
        "index of the official torch wheels for BUILD_MODE=wheels "
        "(empty: PyTorch's own index, …/whl/cuXYZ for CUDA_VERSION)",
        "network",
        SOURCE,
        _optional(
            _url(
                "https://HOST/whl/cu130",
                password="point PIP_INDEX_URL at that index instead (its password travels as "
                "a BuildKit secret), or install from --wheelhouse DIR",
            )
        ),
        _URL_FORM,
    ),
    Setting("CA_BUNDLE", "", "host CA bundle file given to builds as a BuildKit secret", "network"),
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}

# Build args computed from CCA (gpu.cca_build_args), never set by hand: the compile steps get
# ready-made arch lists and do not parse CCA themselves.
# BUILD_EXTENSIONS (0/1) is decided from EXTENSIONS and --extension folders: 1 builds the
# extensions stage, which 0 leaves out of the build entirely.
# COMPILED (0/1): something is compiled here (BUILD_MODE source or torch-wheel, or extensions),
# so there is a runtime closure to derive and wheels to repair.
DERIVED_BUILD_ARGS = (
    "TORCH_CUDA_ARCH_LIST",
    "CUDA_ARCHITECTURES",
    "MAGMA_CUDA_ARCH_MIN",
    "BUILD_EXTENSIONS",
    "COMPILED",
)
DERIVED_DEFAULTS = {"BUILD_EXTENSIONS": "0", "COMPILED": "1"}

_REFERENCE = re.compile(r"\$\{([A-Z_]+)\}")


def compiles_cuda(values: Mapping[str, str]) -> bool:
    """Whether a build of these settings compiles CUDA code: a CUDA toolkit and a CCA."""
    return values.get("CUDA_FROM", "image") != "none" and bool(values.get("CCA"))


def references(value: str) -> list[str]:
    """The settings a value refers to as ${NAME}."""
    return _REFERENCE.findall(value)


def expand(value: str, values: Mapping[str, str]) -> str:
    """Substitute ${NAME} references to other settings, as Docker's ARG lines do."""
    return _REFERENCE.sub(lambda match: values.get(match.group(1), ""), value)


def layered(*layers: Mapping[str, str | None] | None) -> dict[str, str]:
    """Merge sources by precedence, highest first: a name takes the first value that is set."""
    merged: dict[str, str] = {}
    for layer in reversed([layer for layer in layers if layer]):
        merged.update({name: value for name, value in layer.items() if value is not None})
    return merged


def normalize(values: Mapping[str, str]) -> dict[str, str]:
    """Put each known setting into its one form (unknown names pass unchanged)."""
    return {
        name: BY_NAME[name].normalize(value) if name in BY_NAME else value
        for name, value in values.items()
    }


def resolve(
    flags: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Every setting by precedence (flag > environment > .env > default), normalised, checked."""
    check_environment(environ or {}, dotenv)
    given = layered(flags, environ, dotenv)
    values = {setting.name: given.get(setting.name, setting.default) for setting in SETTINGS}
    values = normalize(values)
    validate(values)
    return values


# What another project's shell may export that would make Compose act on that project's
# containers, read its files, or build for another machine: refused by name, with the fix.
_FOREIGN_COMPOSE = {
    "COMPOSE_PROJECT_NAME": "act on project {value}, perhaps another project's containers",
    "COMPOSE_FILE": "read {value} instead of this checkout's compose files",
}
_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def check_environment(
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None] | None,
    machine: str | None = None,
) -> None:
    """Refuse Compose and Docker variables of the shell that would take the build elsewhere."""
    import platform

    for name, effect in _FOREIGN_COMPOSE.items():
        value, mine = environ.get(name), (dotenv or {}).get(name)
        if value is not None and mine is not None and value.strip() != mine.strip():
            raise UserError(
                f"{name}={value} from your shell overrides .env's {name}={mine}: Compose would "
                f"{effect.format(value=value)}; unset {name} (unset {name}), or write the value "
                f"you want into .env"
            )
    separator = environ.get("COMPOSE_PATH_SEPARATOR")
    files = (dotenv or {}).get("COMPOSE_FILE") or ""
    if separator and ":" in files and separator not in files:
        raise UserError(
            f"COMPOSE_PATH_SEPARATOR={separator} from your shell splits .env's "
            f"COMPOSE_FILE={files} wrongly (it uses ':'); unset COMPOSE_PATH_SEPARATOR"
        )
    wanted = environ.get("DOCKER_DEFAULT_PLATFORM", "").strip()
    arch = _ARCHITECTURES.get((machine or platform.machine()).lower())
    if wanted and arch and wanted.lower().split("/")[:2] != ["linux", arch]:
        raise UserError(
            f"DOCKER_DEFAULT_PLATFORM={wanted} from your shell would build for {wanted} on this "
            f"linux/{arch} machine (emulated, if at all: hours more, and no GPU); unset "
            f"DOCKER_DEFAULT_PLATFORM"
        )
    for name in ("DOCKER_BUILDKIT", "COMPOSE_DOCKER_CLI_BUILD"):
        if environ.get(name, "").strip().lower() in ("0", "false"):
            raise UserError(
                f"{name}={environ[name]} from your shell turns BuildKit off, which the build "
                f"needs (secret and cache mounts); unset {name}"
            )


def validate(values: Mapping[str, str], names: Iterable[str] | None = None) -> None:
    """Run each setting's check on normalised values; raise UserError for the first bad one."""
    for name in names or values:
        setting = BY_NAME.get(name)
        if setting and setting.check:
            setting.check(name, values[name])
    _check_user(values)
    _check_index_credentials(values)


def _check_index_credentials(values: Mapping[str, str]) -> None:
    # Both would be the password of PIP_INDEX_URL's index: which one is meant is unclear.
    url, token = values.get("PIP_INDEX_URL", ""), values.get("PIP_INDEX_TOKEN", "")
    if url and token and urls.parse("PIP_INDEX_URL", url).password:
        raise UserError(
            f"PIP_INDEX_URL '{urls.shown(url)}' holds a password and PIP_INDEX_TOKEN is set too; "
            f"keep one: the URL without its password (https://USER@HOST/simple) and the token, "
            f"or the URL alone"
        )


# Debian policy's static system accounts (base-passwd), present in Debian and Ubuntu images: ids
# 1-99 and 65534 (nobody), and their names. The container user can never take one over.
SYSTEM_IDS = (1, 99)
NOBODY = 65534
SYSTEM_USERS = [
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "_apt",
    "systemd-network",
    "systemd-resolve",
    "messagebus",
]


def _check_user(values: Mapping[str, str]) -> None:
    # A non-root container user cannot take root's name or group, nor a system account's id or
    # name: the image would have to delete or take over that account to create it.
    if values.get("UID", "0") == "0":
        return
    for name in ("USR", "GRP"):
        if values.get(name) == "root":
            raise UserError(f"{name} 'root' needs UID 0; use your own name, or set UID=0 for root")
    if values.get("GID") == "0":
        raise UserError("GID '0' is the root group; use your own group id (id -g), or UID=0")
    uid = values.get("UID", "")
    if uid.isdigit() and (SYSTEM_IDS[0] <= int(uid) <= SYSTEM_IDS[1] or int(uid) == NOBODY):
        raise UserError(
            f"UID '{uid}' is a system account's id in Debian and Ubuntu images; use your own id "
            f"(id -u) of 1000 or more, or UID=0 for root"
        )
    if values.get("USR") in SYSTEM_USERS:
        raise UserError(
            f"USR '{values['USR']}' is a system account in Debian and Ubuntu images; choose "
            f"another name (invoke env --force --usr NAME)"
        )


def build_args(service: str) -> list[str]:
    """Name the settings a service's image build receives, in declaration order."""
    return [setting.name for setting in SETTINGS if service in setting.services]


def effective(values: Mapping[str, str]) -> dict[str, str]:
    """Expand ${NAME} references so labels and summaries show what really gets built."""
    return {name: expand(value, values) for name, value in values.items()}


def _stack_names(services_match: Callable[[tuple[str, ...]], bool]) -> list[str]:
    return [
        setting.name
        for setting in SETTINGS
        if setting.group == "stack" and services_match(setting.services)
    ]


GROUP_TITLES = {
    "user": "The container user (invoke env fills these from the host)",
    "compose": "Compose",
    "gpu": "GPU",
    "build": "What is built",
    # Named from the table, so the title says exactly which of these train does not take.
    "stack": "The stack under it (train builds with the defaults of "
    + ", ".join(_stack_names(lambda services: "full" in services and "train" not in services))
    + ", which only the full service passes; "
    + ", ".join(_stack_names(lambda services: services == ("ngc",)))
    + " are the ngc service's)",
    "network": "Downloads behind mirrors and proxies",
}


def service_values(service: str, values: Mapping[str, str]) -> dict[str, str]:
    """The settings as a service's image really gets them, ${NAME} references expanded.

    A setting the service is not given keeps its default (train always builds the default
    CUDA_VERSION, distro and so on, whatever .env says for full).
    """
    mine = {
        setting.name: values[setting.name]
        if service in setting.services or not setting.services
        else setting.default
        for setting in SETTINGS
    }
    return effective(mine)

"""`invoke env`: decide the contents of `.env` from host facts (pure), then write it (thin)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln import envfile, gpu, settings
from torchkiln.errors import UserError
from torchkiln.hostfacts import HostUser

BASE_COMPOSE = "compose/docker-compose.yaml"
CPU_COMPOSE = "compose/cpu.yaml"
WRITTEN = (
    "UID",
    "GID",
    "USR",
    "GRP",
    "TZ",
    "CCA",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "TRAIN_IMAGE_NAME",
    "FULL_IMAGE_NAME",
    "NGC_IMAGE_NAME",
)
# user:password@ in a URL, or a set NAME=value whose name says secret: such a .env is readable
# by its owner only.
_CREDENTIAL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
_SECRET_SETTING = re.compile(
    r"^[ \t]*(?:export[ \t]+)?\w*(?:TOKEN|PASSWORD|SECRET)\w*[ \t]*=[ \t]*(\S.*)$",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass
class EnvPlan:
    """What `invoke env` will write, and what it tells the user about its choices."""

    values: dict[str, str]
    notes: list[str] = field(default_factory=list)


def container_name(name: str) -> str:
    """Make a valid lower-case Linux user name out of any host user or group name."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "_", name.strip().lower()).strip("_-")
    if not cleaned or not re.match(r"[a-z_]", cleaned):
        cleaned = f"u{cleaned}" if cleaned else "user"
    return cleaned[:32]


def project_name(directory: str, user: str) -> str:
    """Derive a stable Compose project name from the checkout's folder and the user."""
    base = re.sub(r"[^a-z0-9_-]+", "-", directory.lower()).strip("-_") or "torchkiln"
    return f"{base}-{user}" if not base.endswith(f"-{user}") else base


def plan_env(
    host: HostUser,
    timezone: str,
    detected_cca: str,
    nvidia: bool,
    nvidia_reason: str,
    checkout: str,
    chosen: Mapping[str, str | None],
) -> EnvPlan:
    """Decide .env's values: `chosen` (flags, then environment) beats host facts."""
    notes: list[str] = []

    def pick(name: str, fact: str) -> str:
        value = chosen.get(name)
        return fact if value is None else value

    # Run as root but asked for another UID (sudo invoke env --uid 1234): root's own group and
    # names cannot serve that user, so they fall back to the UID and the default name.
    uid = pick("UID", str(host.uid))
    root_facts = host.uid == 0 and uid != "0"
    gid = pick("GID", uid if root_facts else str(host.gid))
    settings.validate({"UID": uid, "GID": gid})
    if uid == "0":
        user, group, gid = "root", "root", "0"
        notes.append("UID 0: the container user is root, and no user is created")
    else:
        fallback = settings.BY_NAME["USR"].default if root_facts else host.user
        user = _name(pick("USR", fallback), "USR", notes, explicit=chosen.get("USR") is not None)
        fallback = user if root_facts else host.group
        group = _name(pick("GRP", fallback), "GRP", notes, explicit=chosen.get("GRP") is not None)
    cca = pick("CCA", detected_cca)
    cuda = chosen.get("CUDA_VERSION") or settings.BY_NAME["CUDA_VERSION"].default
    if cca and chosen.get("CCA") is not None:
        cca = ";".join(gpu.check_cca_for_cuda(cca, cuda))
    elif cca:
        cca = gpu.torch_cuda_arch_list(cca)
        try:
            gpu.check_cca_for_cuda(cca, cuda)
        except UserError as error:
            notes.append(f"{error} (invoke build will refuse it until then)")
    else:
        notes.append(
            "no GPU found and no --cca: CCA is left empty; set it with "
            "invoke env --force --cca 8.6 (your GPU's compute capability)"
        )
    compose_file = BASE_COMPOSE
    if not nvidia:
        compose_file = f"{BASE_COMPOSE}:{CPU_COMPOSE}"
        notes.append(
            f"{nvidia_reason}: added {CPU_COMPOSE} to COMPOSE_FILE, so services run "
            "without GPUs; install the NVIDIA Container Toolkit and rerun "
            "invoke env --force to use them"
        )
    project = pick("COMPOSE_PROJECT_NAME", project_name(checkout, user))
    values = {
        "UID": uid,
        "GID": gid,
        "USR": user,
        "GRP": group,
        "TZ": pick("TZ", timezone),
        "CCA": cca,
        "COMPOSE_FILE": pick("COMPOSE_FILE", compose_file),
        "COMPOSE_PROJECT_NAME": project,
        "TRAIN_IMAGE_NAME": pick("TRAIN_IMAGE_NAME", f"{project}/train:latest"),
        "FULL_IMAGE_NAME": pick("FULL_IMAGE_NAME", f"{project}/full:latest"),
        "NGC_IMAGE_NAME": pick("NGC_IMAGE_NAME", f"{project}/ngc:latest"),
    }
    settings.validate(values)
    return EnvPlan(values, notes)


def _name(value: str, setting: str, notes: list[str], explicit: bool) -> str:
    cleaned = container_name(value)
    if cleaned != value:
        if explicit:
            settings.validate({setting: value})  # an explicit bad name is refused, not changed
        notes.append(
            f"{setting}: host name '{value}' is not a valid container name; using '{cleaned}'"
        )
    return cleaned


def render(plan: EnvPlan, now: float | None = None) -> str:
    """Render the .env text for a plan."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(now))
    header = (
        f"# Written by invoke env on {stamp} from this host's facts.\n"
        "# Precedence: command-line flag > process environment > this file > defaults.\n"
        "# Change a value here or uncomment a default; invoke doctor checks the result."
    )
    return settings.render_env(plan.values, WRITTEN, header)


def holds_secret(text: str) -> bool:
    """Tell whether .env text holds a credential: user:password@ in a URL, or a non-empty
    value of a setting named like *TOKEN*, *PASSWORD* or *SECRET* (comments do not count)."""
    if _CREDENTIAL.search(text):
        return True
    return any(value.strip().strip("'\"").strip() for value in _SECRET_SETTING.findall(text))


def write(path: Path, text: str, force: bool, now: float | None = None) -> Path | None:
    """Write .env; with force keep the old file as a timestamped backup, which is returned."""
    backup = None
    if path.exists():
        if not force:
            raise FileExistsError(path)
        backup = envfile.backup_name(path, now)
        backup.write_bytes(path.read_bytes())
        backup.chmod(path.stat().st_mode & 0o777)
    mode = 0o600 if holds_secret(text) else 0o644
    envfile.write_atomic(path, text, mode)
    return backup


def run(root: Path, chosen: Mapping[str, str | None], force: bool) -> list[str]:
    """Write root/.env from host facts and `chosen` values; return the lines to print."""
    from torchkiln import engine, hostfacts

    _check_chosen(chosen)
    path = root / ".env"
    if path.exists() and not force:
        return [
            f"{path.name} exists and was left untouched; invoke env --force rewrites it "
            "(keeping a backup)"
        ]
    cca = "" if chosen.get("CCA") is not None else hostfacts.gpu_compute_capabilities()
    nvidia, reason = engine.nvidia_runtime_present()
    plan = plan_env(
        hostfacts.host_user(), hostfacts.host_timezone(), cca, nvidia, reason, root.name, chosen
    )
    backup = write(path, render(plan), force)
    lines = [
        f"wrote {path.name}: "
        + ", ".join(f"{name}={plan.values[name]}" for name in ("UID", "GID", "USR", "CCA", "TZ"))
    ]
    if backup:
        lines.append(f"kept the previous {path.name} as {backup.name}")
    lines += [f"note: {note}" for note in plan.notes]
    lines.append("next: invoke doctor, then invoke build")
    return lines


def _check_chosen(chosen: Mapping[str, str | None]) -> None:
    given = {name: value for name, value in chosen.items() if value is not None}
    if given.get("CCA") is not None:
        gpu.parse_cca(given["CCA"])
    settings.validate({name: value for name, value in given.items() if name != "CCA"})

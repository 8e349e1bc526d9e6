"""`invoke env`: decide the contents of `.env` from host facts (pure), then write it (thin)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln import compose, envfile, gpu, settings, urls
from torchkiln.errors import UserError
from torchkiln.hostfacts import HostUser

BASE_COMPOSE = compose.COMPOSE_FILE
CPU_COMPOSE = compose.CPU_COMPOSE_FILE
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


@dataclass
class EnvPlan:
    """What `invoke env` will write, and what it tells the user about its choices."""

    values: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def written(self) -> list[str]:
        """The settings .env sets (the others stay commented defaults)."""
        return list(self.values)


def container_name(name: str) -> str:
    """Make a valid lower-case Linux user name out of any host user or group name."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "_", name.strip().lower()).strip("_-")
    if not cleaned or not re.match(r"[a-z_]", cleaned):
        cleaned = f"u{cleaned}" if cleaned else "user"
    return cleaned[:32]


def plan_env(
    host: HostUser,
    timezone: str,
    detected_cca: str,
    nvidia: bool,
    nvidia_reason: str,
    checkout: str,
    chosen: Mapping[str, str | None],
    kept: Mapping[str, str] | None = None,
    cpu: bool = False,
) -> EnvPlan:
    """Decide .env's values: `chosen` (flags, then environment) beats host facts; `kept` are
    the user's own settings of the .env being replaced, carried over unless chosen anew;
    `checkout` is the checkout's identity (compose.checkout_identity)."""
    notes: list[str] = []
    chosen = settings.normalize({k: v for k, v in chosen.items() if v is not None})

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
        # Root has its own names and group: a flag asking for others must not be dropped.
        for name, wanted in (("GID", "0"), ("USR", "root"), ("GRP", "root")):
            if chosen.get(name) not in (None, wanted):
                raise UserError(
                    f"--{name.lower()} {chosen[name]} cannot apply with UID 0 (root is "
                    f"{wanted}); drop it, or give --uid with your own id"
                )
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
        gpu.check_cca_for_cuda(cca, cuda)
    elif cca:
        try:
            gpu.check_cca_for_cuda(cca, cuda)
        except UserError as error:
            notes.append(f"{error} (invoke build will refuse it until then)")
    elif not cpu:
        notes.append(
            "no GPU found and no --cca: CCA is left empty; set it with "
            "invoke env --force --cca 8.6 (your GPU's compute capability), or build for the "
            "CPU with invoke env --force --cpu (official CPU wheels, no CUDA)"
        )
    compose_file = BASE_COMPOSE
    if not nvidia:
        compose_file = f"{BASE_COMPOSE}:{CPU_COMPOSE}"
        notes.append(
            f"{nvidia_reason}: added {CPU_COMPOSE} to COMPOSE_FILE, so services run "
            "without GPUs; install the NVIDIA Container Toolkit and rerun "
            "invoke env --force to use them"
        )
    # The checkout's identity (folder name and a hash of its path): two checkouts, even in
    # folders of the same name, never share a Compose project or an image name.
    project = pick("COMPOSE_PROJECT_NAME", checkout)
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
    if cpu:
        values.update(CPU_SETTINGS)
        values["COMPOSE_FILE"] = pick("COMPOSE_FILE", f"{BASE_COMPOSE}:{CPU_COMPOSE}")
        notes.append(
            "--cpu: official CPU wheels on a plain Ubuntu image, no CUDA (minutes, about "
            "1.5 GB); check it with nox -s smoke -- --allow-cpu"
        )
    for name, value in (kept or {}).items():
        if name not in values and name not in chosen:
            values[name] = value
    settings.validate(values)
    return EnvPlan(values, notes)


# What --cpu sets: official CPU wheels (no compile, no CUDA) on a plain image whose python3 is
# the default PYTHON_VERSION.
CPU_SETTINGS = {
    "BUILD_MODE": "wheels",
    "CUDA_FROM": "none",
    "BUILD_IMAGE": "ubuntu:24.04",
    "TRAIN_IMAGE": "ubuntu:24.04",
}


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
    return envfile.render(plan.values, plan.written, header)


def carried_over(old: Mapping[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """Split the settings of a .env being replaced into those to keep and notes on the rest.

    Host facts (WRITTEN) are detected anew; every other setting the user set is kept; names
    that are no setting are dropped, each named (they stay in the backup).
    """
    # In their normal form: a URL's password percent-encoded, which .env holds unquoted and
    # Compose reads as python-dotenv does, whatever characters it has.
    kept = settings.normalize(
        {
            name: value
            for name, value in old.items()
            if name in settings.BY_NAME and name not in WRITTEN and value is not None
        }
    )
    dropped = [name for name in old if name not in settings.BY_NAME and name not in WRITTEN]
    notes = [f"kept your {name}={shown_value(name, value)}" for name, value in kept.items()]
    notes += [f"dropped {name}, which is no torchkiln setting" for name in dropped]
    return kept, notes


def shown_value(name: str, value: str) -> str:
    """A setting's value as a message may show it: passwords and secret-named values masked."""
    if envfile.secret_name(name) and value:
        return urls.MASK
    return urls.mask_text(urls.shown(value))


def project_change_note(old: Mapping[str, str | None], new: Mapping[str, str]) -> list[str]:
    """Say what becomes of the old project's containers when .env names another project."""
    before, after = old.get("COMPOSE_PROJECT_NAME"), new["COMPOSE_PROJECT_NAME"]
    if not before or before == after:
        return []
    return [
        f"COMPOSE_PROJECT_NAME is now {after} (this checkout's own), not {before}: containers "
        f"of {before} keep running; stop them with docker compose -p {before} down, and "
        f"invoke clean removes this checkout's images of either name"
    ]


def write_env(
    root: Path,
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    force: bool,
    cpu: bool = False,
) -> list[str]:
    """Write root/.env from host facts, flags and the environment; return the lines to print."""
    from torchkiln import engine, hostfacts

    chosen = settings.layered(
        flags, {name: environ[name] for name in (*flags, "CUDA_VERSION") if name in environ}
    )
    _check_chosen(chosen)
    file = envfile.path(root)
    if file.exists() and not file.is_file():
        raise UserError(
            f"{file} is a directory, not a settings file; move it away, then run invoke env again"
        )
    if (file.exists() or file.is_symlink()) and not force:
        return [
            f"{file.name} exists and was left untouched; invoke env --force rewrites it "
            "(keeping a backup)"
        ]
    kept: dict[str, str] = {}
    kept_notes: list[str] = []
    old: dict[str, str | None] = {}
    if force and file.exists():
        try:
            old = envfile.read(file)
            kept, kept_notes = carried_over(old)
        except UserError as error:
            kept_notes = [f"the old {file.name} could not be read, so nothing was kept: {error}"]
    cca = "" if chosen.get("CCA") is not None else hostfacts.gpu_compute_capabilities()
    nvidia, reason = engine.nvidia_runtime_present()
    plan = plan_env(
        hostfacts.host_user(),
        hostfacts.host_timezone(),
        cca,
        nvidia,
        reason,
        compose.checkout_identity(root),
        chosen,
        kept,
        cpu,
    )
    kept_notes += project_change_note(old, plan.values)
    backup = envfile.write(file, render(plan), force)
    lines = [
        f"wrote {file.name}: "
        + ", ".join(f"{name}={plan.values[name]}" for name in ("UID", "GID", "USR", "CCA", "TZ"))
    ]
    if backup:
        lines.append(f"kept the previous {file.name} as {backup.name}")
    lines += [f"note: {note}" for note in [*kept_notes, *plan.notes]]
    lines.append("next: invoke doctor, then invoke build")
    return lines


def _check_chosen(chosen: Mapping[str, str]) -> None:
    settings.validate(settings.normalize(chosen))

"""`invoke wheels`: export the image's `wheels` stage to the host, with BUILD-INFO.json.

The stage goes through BuildKit's local output into a temporary sibling of the destination.
BUILD-INFO.json describes the wheels as they are (versions and CUDA read from the wheels
themselves), and is the marker of an export: `--force` replaces only the files an earlier
BUILD-INFO.json lists, and never touches anything else in the folder or the folder's mode.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from torchkiln import (
    __version__,
    build,
    buildchecks,
    buildlog,
    buildplan,
    buildsummary,
    compose,
    doctor,
    extensions,
    farm,
    inputs,
    runner,
    settings,
)
from torchkiln.errors import UserError
from torchkiln.inimage import extreport

INFO_NAME = "BUILD-INFO.json"
PROXY_NAMES = compose.PROXY_ARGS


def earlier_export(dest: Path) -> list[str] | None:
    """The files of an earlier export in dest (its BUILD-INFO.json and the wheels it lists,
    each still there with the hash it recorded); None when dest holds no intact export."""
    info = dest / INFO_NAME
    try:
        recorded = json.loads(info.read_text(encoding="utf-8"))
        entries = recorded["wheels"]
        files = [str(entry["file"]) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for entry, name in zip(entries, files, strict=True):
        path = dest / name
        if "/" in name or not path.is_file() or sha256(path) != entry.get("sha256"):
            return None
    return [INFO_NAME, *files]


def check_dest(dest: Path, force: bool, protected: list[Path]) -> list[str]:
    """Refuse a destination that is not ours to fill; return the earlier export's files that
    --force will replace ([] when dest is new or empty)."""
    inputs.check_path("--dest", str(dest))
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--dest {dest} is a file; give a directory")
    for keep in protected:
        if keep == dest or dest in keep.parents:
            raise UserError(
                f"--dest {dest} holds {keep}; give a folder of its own, such as {keep / 'dist'}"
            )
    try:
        listed = sorted(item.name for item in dest.iterdir()) if dest.is_dir() else []
        # An export killed mid-way leaves its hidden staging folder: not the user's files.
        present = [name for name in listed if not name.startswith(STAGING_PREFIX)]
    except OSError as error:
        raise UserError(
            f"--dest {dest} cannot be read ({error.strerror}); choose another"
        ) from None
    if not present:
        return []
    if not force:
        raise UserError(
            f"--dest {dest} is not empty; pass --force to replace an earlier export there, or "
            f"choose another --dest"
        )
    replaced = earlier_export(dest)
    if replaced is None:
        raise UserError(
            f"--dest {dest} holds no intact earlier export (no {INFO_NAME} whose wheels match), "
            f"so --force would delete your files ({', '.join(present[:3])}); choose an empty "
            f"--dest"
        )
    others = [name for name in present if name not in replaced]
    if others:
        raise UserError(
            f"--dest {dest} holds files that are not part of the earlier export "
            f"({', '.join(others[:3])}); --force replaces only that export: move them or "
            f"choose another --dest"
        )
    return replaced


def sha256(path: Path) -> str:
    """Hash a file in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_CUDA_LINE = re.compile(r"^cuda\s*(?::[^=]*)?=\s*['\"]?([^'\"\s]*)", re.MULTILINE)


def wheel_cuda(path: Path) -> str | None:
    """Read the CUDA version a torch wheel was built with from its torch/version.py ('' for a
    CPU build); None for wheels that do not say."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read("torch/version.py").decode(errors="replace")
    except (KeyError, OSError, zipfile.BadZipFile):
        return None
    match = _CUDA_LINE.search(text)
    value = match.group(1) if match else ""
    return "" if value in ("None", "") else value


def wheel_entry(path: Path) -> dict[str, str]:
    """Describe one wheel: file, distribution, version, platform tag, sha256. The platform tag
    says where it installs: manylinux_2_34_x86_64 for a wheel repaired to travel, any for pure
    Python."""
    name, version = path.name.split("-")[:2]
    platform = path.name.removesuffix(".whl").split("-")[-1]
    return {
        "file": path.name,
        "name": name,
        "version": version,
        "platform": platform,
        "sha256": sha256(path),
    }


def device_code(path: Path) -> dict[str, list[str]]:
    """The SASS and PTX a wheel holds over all its shared objects, read with the fatbin reader
    the build's arch report uses (both empty for a wheel without CUDA code)."""
    try:
        held = extreport.wheel_archs(path, scratch=str(path.parent))
    except (OSError, zipfile.BadZipFile):
        return {"sass": [], "ptx": []}
    return {"sass": held.sass, "ptx": held.ptx}


def build_info(
    wheels: list[Path],
    service: str,
    values: Mapping[str, str],
    base_image_digest: str,
    now: datetime.datetime | None = None,
) -> dict[str, object]:
    """Describe the exported wheels as they are, and the settings that made them."""
    mine = settings.service_values(service, values)
    # Per wheel what it was compiled for: an extension built as-is may hold other archs than CCA.
    entries: list[dict[str, object]] = [
        {**wheel_entry(path), **device_code(path)} for path in sorted(wheels)
    ]
    torch = next((path for path in wheels if path.name.startswith("torch-")), None)
    cuda = wheel_cuda(torch) if torch else None
    # Something here was compiled for CCA: torch (source), torchvision/torchaudio (source,
    # torch-wheel) or an extension.
    compiled = bool(cuda) and (mine["BUILD_MODE"] != "wheels" or bool(mine["EXTENSIONS"]))
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    return {
        "service": service,
        "build_mode": mine["BUILD_MODE"],
        "wheels": entries,
        "versions": {entry["name"]: entry["version"] for entry in entries},
        # From torch's own version.py: None for a CPU-only torch.
        "cuda_version": cuda or None,
        # The archs this build compiled for; official wheels carry their own list.
        "cca": mine["CCA"] if compiled else None,
        # What extensions were compiled for (wheels[].sass/ptx: what each one holds).
        "extension_archs": mine["EXTENSION_ARCHS"],
        "torch_cuda_arch_list": buildplan.build_arg_values(service, values).get(
            "TORCH_CUDA_ARCH_LIST"
        )
        if compiled
        else None,
        "python_version": mine["PYTHON_VERSION"],
        "base_image": mine["BUILD_IMAGE"],
        "base_image_digest": base_image_digest,
        "date": moment.isoformat(timespec="seconds"),
        "torchkiln_version": __version__,
    }


def image_digest(c, image: str) -> str:
    """Name the local base image's digest (repo digest, else image id); '' when not local."""
    result = c.run(
        shlex.join(["docker", "image", "inspect", "--format", "{{json .}}", image]),
        hide=True,
        warn=True,
    )
    if result is None or not result.ok or not result.stdout.strip():
        return ""
    facts = json.loads(result.stdout)
    digests = facts.get("RepoDigests") or []
    return digests[0] if digests else facts.get("Id", "")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# The export's staging folder, on the destination's own filesystem: a rename never crosses
# devices (a --dest that is a mount point), and the folder is never half-written.
STAGING_PREFIX = ".torchkiln-export-"


def make_staging(dest: Path) -> Path:
    """Create the staging folder: inside an existing dest (its filesystem), else beside it (the
    filesystem a new dest is created on). Refused in one line when that cannot be written."""
    where = dest if dest.is_dir() else dest.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=where))
    except OSError as error:
        raise UserError(
            f"--dest {dest}: cannot write into {where} ({error.strerror or error}); choose a "
            f"--dest you may write"
        ) from None


def place(staging: Path, dest: Path, replaced: list[str]) -> None:
    """Move the finished export into dest: a new folder by rename (with the user's umask),
    an existing one file by file, replacing only the earlier export's files."""
    mask = _umask()
    try:
        for item in staging.iterdir():
            item.chmod(0o666 & ~mask)
        if not dest.exists():
            staging.chmod(0o777 & ~mask)
            staging.rename(dest)
            return
        for name in replaced:
            (dest / name).unlink(missing_ok=True)
        # BUILD-INFO.json last: the folder is an export again only once every wheel is in place.
        for item in sorted(staging.iterdir(), key=lambda path: path.name == INFO_NAME):
            os.replace(item, dest / item.name)
    except OSError as error:
        raise UserError(
            f"--dest {dest}: could not move the export into place ({error.strerror or error}); "
            f"nothing of yours there was removed; choose another --dest"
        ) from None


def export_wheels(
    c,
    root: Path,
    built: buildplan.BuildPlan,
    dest: Path,
    force: bool,
    proxies: Mapping[str, str],
) -> None:
    """Build the wheels stage into a staging directory, describe it, move it into place."""
    service = built.service
    if service not in settings.SOURCE:
        raise UserError(f"service '{service}' has no wheels stage (it uses NGC's torch); use train")
    replaced = check_dest(dest, force, [root, Path.cwd(), Path.home()])
    dry = bool(c.config.run.dry)
    mine = settings.service_values(service, built.values)
    doctor.require_ready(mine, False, service, root=root, known=built.preflight)
    if not dry:
        build.check_builder(c, built.builder, export_cache=False)
        for line in farm.compile_preflight(built.values, root):  # cache and farm (farm.py)
            print(line, flush=True)

    def command(staging: str) -> list[str]:
        return compose.wheels_command(
            service,
            {**built.build_args, **proxies},
            built.contexts,
            built.ca_bundle,
            staging,
            no_cache=built.options.no_cache,
            builder=built.builder,
            cache_from=built.cache_from,
        )

    # The token secret is read from the environment (Compose reads .env itself; buildx does not).
    token = compose.build_secrets(built.values, built.root)
    if dry:
        where = dest if dest.is_dir() else dest.parent
        with c.cd(str(root)):
            c.run(compose.display(command(str(where / f"{STAGING_PREFIX}XXXXXXXX"))))
        return
    staging = make_staging(dest)
    try:
        with runner.checkout_lock(root, "wheels"):
            result = runner.stream(command(str(staging)), root, token)
        if result.failed:
            line = buildsummary.failure_line(f"exporting the wheels of {service}", result)
            # A failed extension is named by project, spec or folder, and step (as by build).
            named = extensions.failure_line(result.output, built.contexts)
            raise UserError(named if named and "--ca-bundle" not in line else line)
        wheels = sorted(staging.glob("*.whl"))
        if not wheels:
            raise UserError(f"the wheels stage of {service} holds no wheel; check BUILD_MODE")
        digest = image_digest(c, settings.service_values(service, built.values)["BUILD_IMAGE"])
        info = build_info(wheels, service, built.values, digest)
        (staging / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        place(staging, dest, replaced)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    ran = buildlog.executed_steps(result.output)
    print(f"steps run: {len(ran)} (the others from cache)")
    for line in buildchecks.summary_lines(result.output):
        print(line)
    # What the compile steps of this export did (nothing when BuildKit took them from its cache).
    print(f"sccache: {buildsummary.sccache_rate(result.output)}")
    for line in extensions.summary_lines(result.output):
        print(line)
    print(f"{len(wheels)} wheels and {INFO_NAME} in {dest}:")
    for entry in info["wheels"]:
        held = " ".join([*entry["sass"], *(f"PTX {name}" for name in entry["ptx"])])
        print(f"  {entry['file']}  sha256:{entry['sha256'][:16]}…{f'  {held}' if held else ''}")

"""`invoke wheels`: export the image's `wheels` stage to the host, atomically, with BUILD-INFO.json.

The stage goes through BuildKit's local output into a temporary sibling of the destination,
which is renamed into place only once the wheels and their BUILD-INFO.json are complete.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from torchkiln import __version__, build, compose, doctor, gpu, settings
from torchkiln.errors import UserError

INFO_NAME = "BUILD-INFO.json"


def check_dest(dest: Path, force: bool, protected: list[Path]) -> None:
    """Refuse a file, a folder that holds the project or home, or a non-empty one without --force.

    --force replaces only an earlier export (wheels and BUILD-INFO.json), never other files.
    """
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--dest {dest} is a file; give a directory")
    for keep in protected:
        if keep == dest or dest in keep.parents:
            raise UserError(
                f"--dest {dest} holds {keep}; give a folder of its own, such as {keep / 'dist'}"
            )
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    if not force:
        raise UserError(
            f"--dest {dest} is not empty; pass --force to replace it, or choose another --dest"
        )
    others = sorted(
        item.name
        for item in dest.iterdir()
        if not (item.is_file() and (item.suffix == ".whl" or item.name == INFO_NAME))
    )
    if others:
        raise UserError(
            f"--dest {dest} holds more than an earlier export ({', '.join(others[:3])}); "
            f"--force replaces only wheels and {INFO_NAME}: choose an empty --dest"
        )


def sha256(path: Path) -> str:
    """Hash a file in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_entry(path: Path) -> dict[str, str]:
    """Describe one wheel: file, distribution, version, sha256."""
    name, version = path.name.split("-")[:2]
    return {"file": path.name, "name": name, "version": version, "sha256": sha256(path)}


def build_info(
    wheels: list[Path],
    service: str,
    values: Mapping[str, str],
    base_image_digest: str,
    now: datetime.datetime | None = None,
) -> dict[str, object]:
    """Assemble BUILD-INFO.json from the wheels and the settings that made them."""
    effective = settings.effective(values)
    entries = [wheel_entry(path) for path in sorted(wheels)]
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    return {
        "service": service,
        "build_mode": values["BUILD_MODE"],
        "wheels": entries,
        "versions": {entry["name"]: entry["version"] for entry in entries},
        "cca": values["CCA"],
        "torch_cuda_arch_list": gpu.torch_cuda_arch_list(values["CCA"]) if values["CCA"] else "",
        "cuda_version": build.build_cuda(service, values),
        "python_version": values["PYTHON_VERSION"],
        "base_image": effective["BUILD_IMAGE"],
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


def place(staging: Path, dest: Path) -> None:
    """Move a finished staging directory to dest, replacing what --force allowed."""
    if dest.exists():
        retired = dest.with_name(f".{dest.name}.old-{staging.name}")
        dest.rename(retired)
        staging.rename(dest)
        shutil.rmtree(retired)
    else:
        staging.rename(dest)


def export(c, root: Path, built: build.BuildPlan, dest: Path, force: bool, dotenv, environ) -> None:
    """Build the wheels stage into a staging directory, describe it, move it into place."""
    service = built.service
    if service not in settings.SOURCE:
        raise UserError(f"service '{service}' has no wheels stage (it uses NGC's torch); use train")
    check_dest(dest, force, [root, Path.cwd(), Path.home()])
    args = compose.given_build_args(service, built.overrides, environ, dotenv)
    bundle = built.overrides.get("CA_BUNDLE") or compose.check_ca_bundle(
        built.values["CA_BUNDLE"], root
    )
    dry = bool(c.config.run.dry)
    if not dry:
        doctor.require_ready(built.values, up=False)
        build.check_builder(c, built.builder, export_cache=False)

    def command(staging: str) -> list[str]:
        return compose.wheels_command(
            service,
            args,
            built.contexts,
            bundle,
            staging,
            no_cache=built.no_cache,
            builder=built.builder,
            cache_from=built.cache_from,
        )

    # The token secret is read from the environment (Compose reads .env itself; buildx does not).
    token = {"PIP_INDEX_TOKEN": built.values["PIP_INDEX_TOKEN"]}
    if dry:
        with c.cd(str(root)):
            c.run(shlex.join(command(str(dest.parent / f".{dest.name}-STAGING"))))
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with c.cd(str(root)):
            result = c.run(shlex.join(command(str(staging))), warn=True, env=token)
        if result.failed:
            raise UserError(
                f"exporting the wheels of {service} failed (exit {result.exited}); the ERROR "
                f"lines above name the step"
            )
        wheels = sorted(staging.glob("*.whl"))
        if not wheels:
            raise UserError(f"the wheels stage of {service} holds no wheel; check BUILD_MODE")
        digest = image_digest(c, settings.effective(built.values)["BUILD_IMAGE"])
        info = build_info(wheels, service, built.values, digest)
        (staging / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        place(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    ran = build.executed_steps(result.stdout + result.stderr)
    print(f"steps run: {len(ran)} (the others from cache)")
    print(f"{len(wheels)} wheels and {INFO_NAME} in {dest}:")
    for entry in info["wheels"]:
        print(f"  {entry['file']}  sha256:{entry['sha256'][:16]}…")

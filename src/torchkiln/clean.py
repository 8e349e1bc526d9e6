"""`invoke clean`: remove what this project left on the engine, and nothing of anyone else's.

This project's containers (its Compose project), its images (tagged or left untagged by a
rebuild: each carries the label io.torchkiln.project=<COMPOSE_PROJECT_NAME>), with --cache the
BuildKit cache of torchkiln builds, with --dist an earlier `invoke wheels` export (only the files
its BUILD-INFO.json lists). Decisions are pure; the task runs the commands.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

PROJECT_LABEL = "io.torchkiln.project"
# BuildKit records whose description names torchkiln: the steps that run its scripts, and the
# cache mounts whose ids start with torchkiln- (ccache, pip, apt).
CACHE_FILTER = "description~=torchkiln"


def images_command(project: str) -> list[str]:
    """List this project's images, tagged and dangling, as JSON lines."""
    return [
        "docker", "image", "ls", "--all", "--no-trunc",
        "--filter", f"label={PROJECT_LABEL}={project}", "--format", "{{json .}}",
    ]  # fmt: skip


def project_images(listing: str) -> list[str]:
    """The image ids in `images_command`'s output, each once."""
    ids: list[str] = []
    for line in listing.splitlines():
        if line.strip():
            image = json.loads(line)["ID"]
            if image not in ids:
                ids.append(image)
    return ids


def commands(project: str, images: list[str], cache: bool) -> list[list[str]]:
    """The commands that remove the project's containers, images and (asked) build cache."""
    found = [["docker", "compose", "down", "--remove-orphans"]]
    if images:
        found.append(["docker", "image", "rm", "--force", *images])
    if cache:
        found.append(["docker", "buildx", "prune", "--force", "--filter", CACHE_FILTER])
    return found


_SIZE = re.compile(r"^([\d.]+)\s*([kKMGT]?B)$")
_FACTOR = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def used_bytes(system_df_json: str) -> float:
    """Sum the sizes `docker system df --format '{{json .}}'` reports for images and cache."""
    total = 0.0
    for line in system_df_json.splitlines():
        if not line.strip():
            continue
        row: Mapping[str, str] = json.loads(line)
        if row.get("Type") not in ("Images", "Build Cache"):
            continue
        match = _SIZE.match(str(row.get("Size", "")).strip())
        if match:
            total += float(match[1]) * _FACTOR[match[2]]
    return total


def clean_project(c, root: Path, cache: bool, dist: Path | None) -> list[str]:
    """Remove the project's containers, images, (asked) cache and export; say what went."""
    import shlex

    from torchkiln import build, settings, wheels

    values = settings.resolve({}, os.environ, build.read_dotenv(root))
    project = values["COMPOSE_PROJECT_NAME"]
    dry = bool(c.config.run.dry)
    before = c.run(shlex.join(DF_COMMAND), hide=True, warn=True)
    listed = c.run(shlex.join(images_command(project)), hide=True, warn=True)
    images = project_images(listed.stdout) if listed is not None and listed.ok else []
    for command in commands(project, images, cache):
        c.run(shlex.join(command), warn=True)
    lines = [f"project {project}: containers removed, {len(images)} images removed"]
    if dist is not None:
        replaced = wheels.earlier_export(dist) if dist.is_dir() else None
        if replaced is None:
            lines.append(f"{dist}: no intact invoke wheels export there; left as it is")
        elif not dry:
            for name in replaced:
                (dist / name).unlink(missing_ok=True)
            if not any(dist.iterdir()):
                dist.rmdir()
            lines.append(f"{dist}: removed the {len(replaced) - 1} exported wheels")
    after = c.run(shlex.join(DF_COMMAND), hide=True, warn=True)
    if not dry and before is not None and after is not None and before.ok and after.ok:
        freed = used_bytes(before.stdout) - used_bytes(after.stdout)
        lines.append(f"freed {max(freed, 0) / 1e9:.2f} GB of images and build cache")
    return lines


DF_COMMAND = ["docker", "system", "df", "--format", "{{json .}}"]

"""`invoke clean`: remove what this checkout left on the engine, and nothing of anyone else's.

This checkout's containers (its Compose project, refused when another checkout's containers share
it), its images (those carrying its identity, tagged or left untagged by a rebuild), with --dist
an earlier `invoke wheels` export (only the files its BUILD-INFO.json lists). BuildKit's cache is
not a checkout's: it is keyed by content, so a step two checkouts build alike is one record, and
the sccache, pip and apt cache mounts are shared by every checkout on the engine by design. So
--cache only says what that cache holds, and removes it with --all-checkouts alone. Each removal
is listed with its size first, `invoke --dry clean` lists and removes nothing, and the end says
what was freed and what remains. Decisions are pure; the task runs the commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torchkiln import checkout, compose
from torchkiln.errors import UserError

# BuildKit records whose description names torchkiln: the steps that run its scripts, and the
# cache mounts whose ids start with torchkiln- (sccache, pip, apt).
CACHE_FILTER = "description~=torchkiln"
DF_COMMAND = ["docker", "system", "df", "--format", "{{json .}}"]
DF_VERBOSE_COMMAND = ["docker", "system", "df", "--verbose", "--format", "{{json .}}"]

_SIZE = re.compile(r"^([\d.]+)\s*([kKMGTP]?B)$")
_FACTOR = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15}


def size_bytes(text: str) -> float:
    """Read a size as docker prints it (5.63GB, 11.1kB, 0B); 0 when it does not parse."""
    match = _SIZE.match(str(text).strip())
    return float(match[1]) * _FACTOR[match[2]] if match else 0.0


def used_bytes(system_df_json: str) -> float:
    """Sum the sizes `docker system df --format '{{json .}}'` reports for images and cache."""
    total = 0.0
    for line in system_df_json.splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("Type") in ("Images", "Build Cache", "Containers"):
                total += size_bytes(row.get("Size", ""))
    return total


@dataclass(frozen=True)
class CacheRecord:
    """One BuildKit cache record."""

    id: str
    description: str
    size: float
    mount: bool  # a cache mount (sccache, pip, apt), not a layer

    @property
    def torchkiln(self) -> bool:
        """Tell whether a torchkiln build made it (its steps and cache mounts say torchkiln)."""
        return "torchkiln" in self.description


def cache_records(system_df_verbose_json: str) -> list[CacheRecord]:
    """Read the build cache records of `docker system df --verbose --format '{{json .}}'`."""
    text = system_df_verbose_json.strip()
    rows = (json.loads(text) if text else {}).get("BuildCache") or []
    return [
        CacheRecord(
            id=str(row.get("ID", "")).rstrip("*"),
            description=str(row.get("Description", "")),
            size=size_bytes(row.get("Size", "")),
            mount=row.get("CacheType") == "exec.cachemount",
        )
        for row in rows
    ]


def cache_summary(records: Sequence[CacheRecord]) -> str:
    """Say what torchkiln's part of the build cache holds, and that every checkout shares it."""
    mine = [record for record in records if record.torchkiln]
    layers = sum(record.size for record in mine if not record.mount)
    mounts = sum(record.size for record in mine if record.mount)
    return (
        f"{checkout.size_text(layers)} of layers and {checkout.size_text(mounts)} of sccache, pip "
        f"and apt cache mounts in {len(mine)} records of torchkiln builds, shared by every "
        f"torchkiln checkout on this engine (BuildKit keys its cache by content)"
    )


def cache_refusal(records: Sequence[CacheRecord]) -> str:
    """Refuse --cache alone: the cache is every checkout's, so removing it needs saying so."""
    return (
        f"--cache: the build cache holds {cache_summary(records)}; add --all-checkouts to remove "
        f"it anyway (every checkout's next build compiles again), or leave out --cache to remove "
        f"only this checkout's containers and images"
    )


def listing(plan: checkout.CleanPlan, records: Sequence[CacheRecord], dry: bool) -> list[str]:
    """One line per container, image and cache record to remove, with its size."""
    verb = "would remove" if dry else "removing"
    lines = [
        f"{verb} container {item.name} ({item.status}, {checkout.size_text(item.size)} written)"
        for item in plan.containers
    ]
    lines += [
        f"{verb} image {item.shown} ({checkout.short(item.id)}, {checkout.size_text(item.size)})"
        for item in plan.images
    ]
    lines += [
        f"{verb} cache record {item.id[:12]} {item.description[:80]} "
        f"({checkout.size_text(item.size)})"
        for item in records
    ]
    return lines + plan.kept


def commands(plan: checkout.CleanPlan, cache: bool) -> list[list[str]]:
    """The commands that remove the checkout's containers, images and (asked) build cache."""
    found = [["docker", "compose", "down", "--remove-orphans"]]
    if plan.images:
        found.append(["docker", "image", "rm", "--force", *(item.id for item in plan.images)])
    if cache:
        found.append(["docker", "buildx", "prune", "--force", "--filter", CACHE_FILTER])
    return found


def outcome(
    plan: checkout.CleanPlan, freed: float | None, records: Sequence[CacheRecord]
) -> list[str]:
    """Say what was removed and freed, and what the build cache still holds and how to free it."""
    lines = [
        f"removed {len(plan.containers)} containers and {len(plan.images)} images"
        + (f"; freed {checkout.size_text(freed)} of disk" if freed is not None else "")
        + kept_in_cache(plan, freed)
    ]
    if any(record.torchkiln for record in records):
        lines.append(
            f"the build cache still holds {cache_summary(records)}: an image's layers stay "
            f"there after the image goes; invoke clean --cache --all-checkouts frees it (every "
            f"checkout's next build compiles again)"
        )
    return lines


def kept_in_cache(plan: checkout.CleanPlan, freed: float | None) -> str:
    """What of the removed images stays on the disk: their layers, which the build cache (and
    the base images) keep and the next invoke build reuses ('' when nothing or not measured)."""
    total = sum(item.size for item in plan.images)
    if freed is None or not total or total - freed < 1e6:
        return ""
    return (
        f"; {checkout.size_text(total - freed)} of the images' {checkout.size_text(total)} stay "
        f"on disk as layers of the build cache and the base images, reused by the next invoke "
        f"build"
    )


def _probe(command: list[str]) -> str:
    # Read-only queries run under `invoke --dry` too: the listing is what a dry run is for.
    return checkout.query(command)


def clean_project(
    c, root: Path, cache: bool, dist: Path | None, all_checkouts: bool = False
) -> list[str]:
    """Remove the checkout's containers, images, (asked) cache and export; say what went."""
    from torchkiln import wheels

    dry = bool(c.config.run.dry)
    if all_checkouts and not cache:
        raise UserError(
            "--all-checkouts applies to --cache; write invoke clean --cache --all-checkouts"
        )
    _, project = checkout.project_of(root, os.environ)
    identity = compose.checkout_identity(root)
    if cache and not all_checkouts:
        raise UserError(cache_refusal(cache_records(_probe(DF_VERBOSE_COMMAND))))
    plan = checkout.plan_clean(
        checkout.project_containers(project),
        checkout.candidate_images(project, identity),
        project,
        identity,
        root,
    )
    doomed = (
        [record for record in cache_records(_probe(DF_VERBOSE_COMMAND)) if record.torchkiln]
        if cache
        else []
    )
    lines = [f"checkout {identity}, Compose project {project}:"]
    lines += listing(plan, doomed, dry)
    replaced = wheels.earlier_export(dist) if dist is not None and dist.is_dir() else None
    if dist is not None and replaced is None:
        lines.append(f"{dist}: no intact invoke wheels export there; left as it is")
    elif dist is not None and replaced is not None:
        verb = "would remove" if dry else "removing"
        lines.append(f"{verb} the {len(replaced) - 1} exported wheels in {dist}")
    for line in lines:
        print(line, flush=True)
    before = None if dry else _probe(DF_COMMAND)
    for command in commands(plan, cache):
        c.run(shlex.join(command), warn=True)
    if dry:
        return ["invoke --dry: nothing was removed"]
    if dist is not None and replaced is not None:
        for name in replaced:
            (dist / name).unlink(missing_ok=True)
        if not any(dist.iterdir()):
            dist.rmdir()
    after = _probe(DF_COMMAND)
    freed = max(used_bytes(before or "") - used_bytes(after), 0.0)
    return outcome(plan, freed, cache_records(_probe(DF_VERBOSE_COMMAND)))

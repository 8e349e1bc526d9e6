"""What on the engine is this checkout's: its containers (Compose labels each with the folder it
ran in) and its images (labelled with the checkout's identity by `invoke build`). Two checkouts
may name the same Compose project (an old `.env`, a copied one, a name typed by hand): the tasks
that stop or remove things (`down`, `clean`) and those that would recreate another checkout's
container (`up`) refuse then, naming the other checkout and the fix. Decisions are pure; the
queries at the end are thin and change nothing (they run under `invoke --dry` too).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchkiln import compose, envfile, settings
from torchkiln.errors import UserError


@dataclass(frozen=True)
class Container:
    """A container of a Compose project, as `docker container inspect --size` shows it."""

    id: str
    name: str
    status: str
    project: str
    working_dir: str
    size: int  # bytes it wrote


@dataclass(frozen=True)
class Image:
    """An image with the labels that tell whose it is."""

    id: str
    tags: tuple[str, ...]
    size: int
    project: str
    checkout: str

    @property
    def shown(self) -> str:
        """The image's tags, or that it has none (a rebuild left it)."""
        return ", ".join(self.tags) if self.tags else "<untagged: left by a rebuild>"


def containers(inspected: str) -> list[Container]:
    """Read `docker container inspect --size` JSON."""
    found = []
    for item in json.loads(inspected or "[]"):
        labels = (item.get("Config") or {}).get("Labels") or {}
        found.append(
            Container(
                id=item["Id"],
                name=item.get("Name", "").lstrip("/"),
                status=(item.get("State") or {}).get("Status", ""),
                project=labels.get(compose.COMPOSE_PROJECT_LABEL, ""),
                working_dir=labels.get(compose.COMPOSE_DIR_LABEL, ""),
                size=int(item.get("SizeRw") or 0),
            )
        )
    return found


def images(inspected: str) -> list[Image]:
    """Read `docker image inspect` JSON."""
    found = []
    for item in json.loads(inspected or "[]"):
        labels = (item.get("Config") or {}).get("Labels") or {}
        found.append(
            Image(
                id=item["Id"],
                tags=tuple(tag for tag in item.get("RepoTags") or [] if tag != "<none>:<none>"),
                size=int(item.get("Size") or 0),
                project=labels.get(compose.PROJECT_LABEL, ""),
                checkout=labels.get(compose.CHECKOUT_LABEL, ""),
            )
        )
    return found


def inside(path: str, root: Path) -> bool:
    """Tell whether a folder Compose recorded is the checkout or one below it (compose/)."""
    if not path:
        return False
    resolved, mine = Path(path), root.resolve()
    return resolved == mine or mine in resolved.parents


def foreign_containers(found: Sequence[Container], root: Path) -> list[Container]:
    """The project's containers that another checkout (another folder) started."""
    return [container for container in found if not inside(container.working_dir, root)]


def foreign_line(project: str, others: Sequence[Container], action: str) -> str:
    """Refuse to act on a project another checkout uses too, naming it and the fix."""
    first = others[0]
    where = str(Path(first.working_dir).parent) if first.working_dir else "another folder"
    return (
        f"COMPOSE_PROJECT_NAME '{project}' is also the project of the checkout at {where} "
        f"(container {first.name}, {first.status}): {action} would act on it; give this checkout "
        f"its own name with invoke env --force (it writes one unique to this folder)"
    )


def ours(image: Image, project: str, identity: str, others_use_project: bool) -> bool:
    """Tell whether an image is this checkout's: it carries the checkout's identity; or, built
    without it (a plain docker compose build), it carries the project while no other checkout
    is known to use that project."""
    if image.checkout:
        return image.checkout == identity
    return image.project == project and not others_use_project


@dataclass
class CleanPlan:
    """What `invoke clean` removes and what it leaves, each said."""

    containers: list[Container]
    images: list[Image]
    kept: list[str]


def plan_clean(
    found_containers: Sequence[Container],
    found_images: Sequence[Image],
    project: str,
    identity: str,
    root: Path,
) -> CleanPlan:
    """Decide which containers and images are this checkout's; refuse when another checkout's
    containers share the project (Compose would remove those too)."""
    others = foreign_containers(found_containers, root)
    if others:
        raise UserError(foreign_line(project, others, "invoke clean"))
    others_use_project = any(
        image.project == project and image.checkout and image.checkout != identity
        for image in found_images
    )
    mine, kept = [], []
    for image in found_images:
        if ours(image, project, identity, others_use_project):
            mine.append(image)
        elif image.checkout:
            kept.append(
                f"kept image {image.shown} ({short(image.id)}): built by another checkout "
                f"({image.checkout})"
            )
        else:
            kept.append(
                f"kept image {image.shown} ({short(image.id)}): project {project} without a "
                f"checkout label, and another checkout uses that project; docker image rm "
                f"{short(image.id)} removes it"
            )
    return CleanPlan(list(found_containers), mine, kept)


def short(image_id: str) -> str:
    """An image id as docker image ls shows it."""
    return image_id.removeprefix("sha256:")[:12]


def size_text(size: float) -> str:
    """A size in decimal units, as docker shows them."""
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.2f} {unit}"
    return f"{size:.0f} B"


def env_files_problem(environ: Mapping[str, str], root: Path) -> str:
    """Say why an exported COMPOSE_ENV_FILES would make Compose read another project's
    settings ('' when it is unset or names this checkout's .env)."""
    value = environ.get("COMPOSE_ENV_FILES", "")
    if not value:
        return ""
    mine = envfile.path(root).resolve()
    if [Path(item).resolve() for item in value.split(",") if item] == [mine]:
        return ""
    return (
        f"COMPOSE_ENV_FILES={value} from your shell makes Compose read those settings instead "
        f"of {mine}; unset COMPOSE_ENV_FILES"
    )


def project_of(root: Path, environ: Mapping[str, str]) -> tuple[dict[str, str | None], str]:
    """Read .env (it must exist) and refuse a foreign environment; return .env and the Compose
    project, without requiring every other setting to be valid (down and clean must work with
    a .env whose CCA is wrong)."""
    file = envfile.path(root)
    if not file.exists() and not file.is_symlink():
        raise UserError(
            f"{file} does not exist; run invoke env first (it writes COMPOSE_FILE, "
            f"COMPOSE_PROJECT_NAME and the image names, which Compose needs here)"
        )
    dotenv = envfile.read(file)
    settings.check_environment(environ, dotenv)
    problem = env_files_problem(environ, root)
    if problem:
        raise UserError(problem)
    name = "COMPOSE_PROJECT_NAME"
    project = settings.layered(environ, dotenv).get(name) or settings.BY_NAME[name].default
    project = settings.BY_NAME[name].normalize(project)
    settings.validate({name: project}, [name])
    return dotenv, project


# --- thin queries (read only) --------------------------------------------------------------


DOCKER_TIMEOUT_S = 120


def run_docker(
    command: Sequence[str], stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a docker command (its output captured); one line, not a traceback, when it cannot
    run or does not end within DOCKER_TIMEOUT_S."""
    try:
        return subprocess.run(
            list(command), input=stdin, cwd=cwd, capture_output=True, text=True,
            timeout=DOCKER_TIMEOUT_S,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        what = " ".join(command[:3])
        raise UserError(f"{what} did not answer ({error}); is Docker running?") from None


def query(command: list[str]) -> str:
    """Run a read-only docker query; a failure is one line."""
    result = run_docker(command)
    if result.returncode != 0:
        line = " ".join(result.stderr.split())[:200]
        raise UserError(f"{' '.join(command[:3])} failed: {line}; run invoke doctor")
    return result.stdout


def project_containers(project: str) -> list[Container]:
    """The containers of a Compose project, running or not."""
    label = f"label={compose.COMPOSE_PROJECT_LABEL}={project}"
    ids = query(["docker", "container", "ls", "--all", "--quiet", "--filter", label]).split()
    if not ids:
        return []
    return containers(query(["docker", "container", "inspect", "--size", *ids]))


def candidate_images(project: str, identity: str) -> list[Image]:
    """The images that carry the project's or the checkout's label, each once."""
    ids: list[str] = []
    for label in (f"{compose.PROJECT_LABEL}={project}", f"{compose.CHECKOUT_LABEL}={identity}"):
        listing = ["docker", "image", "ls", "--all", "--quiet", "--no-trunc"]
        for image_id in query([*listing, "--filter", f"label={label}"]).split():
            if image_id not in ids:
                ids.append(image_id)
    return images(query(["docker", "image", "inspect", *ids])) if ids else []


def guard(
    root: Path,
    environ: Mapping[str, str] | None = None,
    action: str = "",
    engine_errors: bool = True,
) -> str:
    """Refuse, before a Compose task runs, a missing .env, a foreign environment, and a project
    another checkout's containers use; return the project. Without engine_errors an engine that
    does not answer passes here, for a preflight of the caller's own to name."""
    environ = os.environ if environ is None else environ
    _, project = project_of(root, environ)
    try:
        found = project_containers(project)
    except UserError:
        if engine_errors:
            raise
        found = []
    others = foreign_containers(found, root)
    if others:
        raise UserError(foreign_line(project, others, action or "this task"))
    return project

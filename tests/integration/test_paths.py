"""Paths reach BuildKit intact, for real: `--source` checkouts and a `--ca-bundle` in a folder
whose name holds commas, spaces, both quotes, `=` and `$` (Compose interpolates `$` in every file
it reads; buildx's `--output` and `--secret` are CSV), `invoke wheels --dest` of the same kind,
and a `--dest` that is a mount point of another filesystem (a rename across devices fails).
Another project's harmless Compose variable (COMPOSE_PROFILES) is exported meanwhile.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from projects import CA_BUNDLE, Project, assert_ok, make_project, remove_project

from torchkiln import wheels

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

AWKWARD = "a, \"b\" 'c' d=e $HOME"


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory):
    """A build from sources and a CA bundle in a folder named AWKWARD."""
    tmp = tmp_path_factory.mktemp("paths")
    project = make_project(tmp, "paths")
    project.env["COMPOSE_PROFILES"] = "webapp-debug"  # another project's: Compose ignores it
    folder = tmp / AWKWARD
    fixtures = project.root / "tests" / "fixtures"
    shutil.copytree(fixtures / "pytorch", folder / "pytorch")
    shutil.copytree(fixtures / "vision", folder / "vision")
    shutil.copy(CA_BUNDLE, folder / "ca, bundle.pem")
    sources = [
        "--source", f"pytorch={folder / 'pytorch'}",
        "--source", f"vision={folder / 'vision'}",
        "--ca-bundle", str(folder / "ca, bundle.pem"),
    ]  # fmt: skip
    try:
        output = assert_ok(project.invoke("build", "--no-up", *sources))
        yield project, sources, folder, output
    finally:
        remove_project(project)


def exported(dest: Path) -> list[str]:
    return sorted(path.name for path in dest.iterdir() if not path.name.startswith("."))


def test_the_build_took_every_path_as_it_is(awkward) -> None:
    """The build ran from those folders (a mangled name would be no folder at all), and the
    override names them escaped for Compose, not expanded ($HOME is no variable here)."""
    project, _, folder, _ = awkward
    override = (project.root / ".torchkiln" / "build-train.yaml").read_text()
    escaped = str(folder).replace("$", "$$").replace('"', '\\"')
    assert escaped in override, override
    assert project.run("docker", "image", "inspect", project.image("train")).returncode == 0


def test_wheels_dest_with_commas_quotes_and_equals(awkward, tmp_path: Path) -> None:
    project, sources, _, _ = awkward
    dest = tmp_path / f"out, {AWKWARD}"
    said = assert_ok(project.invoke("wheels", "--dest", str(dest), *sources))
    assert f"in {dest}:" in said
    names = exported(dest)
    assert wheels.INFO_NAME in names and any(name.startswith("torch-") for name in names)


def test_wheels_dest_on_another_filesystem(awkward, tmp_path: Path) -> None:
    """The dest is a tmpfs mount point (in a mount namespace of this test's own)."""
    project, sources, _, _ = awkward
    if not shutil.which("unshare"):
        pytest.skip("needs unshare")
    dest, listing = tmp_path / "mounted dest", tmp_path / "listing"
    dest.mkdir()
    script = (
        'mount -t tmpfs tmpfs "$1" && test "$(stat -f -c %T "$1")" = tmpfs && '
        'shift 2 && "$@" && ls -A "$0" > "$LISTING"'
    )
    command = [
        "unshare", "--mount", "--propagation", "private", "sh", "-c", script,
        str(dest), str(dest), "x", sys.executable, "-m", "invoke", "wheels", "--dest", str(dest),
        *sources,
    ]  # fmt: skip
    env = {**project.env, "LISTING": str(listing)}
    result = Project(project.root, project.name, env).run(*command)
    output = result.stdout + result.stderr
    if result.returncode != 0 and "Operation not permitted" in output:
        pytest.skip("this machine lets no test mount a tmpfs")
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "Invalid cross-device link" not in output
    names = listing.read_text().split("\n")
    assert wheels.INFO_NAME in names, names
    assert not [name for name in names if name.startswith(wheels.STAGING_PREFIX)], names
    assert subprocess.run(["ls", "-A", str(dest)], capture_output=True, text=True).stdout == ""

"""Two checkouts on one engine never share anything they can delete, for real: two clones in
folders of the same name get their own Compose project and image names from `invoke env`;
`invoke clean` in one lists (`--dry`, with sizes) and removes only its own container and images
and says what it freed and what the build cache still holds; and when two checkouts do share a
project name (a copied `.env`), `down`, `up` and `clean` refuse, naming the other checkout,
while its container keeps running.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import types
from pathlib import Path

import projects
import pytest
from projects import Project, assert_ok, fixture_sources, make_project, remove_project

from torchkiln import compose, envfile

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


def twin(tmp_path: Path, parent: str) -> Project:
    """A project in <parent>/proj, with .env written by invoke env (identity-based names)."""
    (tmp_path / parent).mkdir()
    made = make_project(tmp_path / parent, "twin")
    root = tmp_path / parent / "proj"
    made.root.rename(root)
    project = Project(root, made.name, made.env)
    flags = ["--uid", "1234", "--gid", "1234", "--usr", "alice", "--grp", "alice"]
    assert_ok(project.invoke("env", "--force", "--cca", "8.6", *flags))
    return project


def running(project: Project) -> str:
    listed = project.run("docker", "compose", "ps", "--quiet", "train")
    return listed.stdout.strip() if listed.returncode == 0 else ""


def image_present(reference: str, project: Project) -> bool:
    return project.run("docker", "image", "inspect", reference).returncode == 0


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory):
    """Two built and running checkouts: …/a/proj and …/b/proj."""
    tmp = tmp_path_factory.mktemp("twins")
    made: list[Project] = []
    try:
        for parent in ("a", "b"):
            project = twin(tmp, parent)
            made.append(project)
            assert_ok(project.invoke("build", *fixture_sources(project)))
        yield made
    finally:
        for project in made:
            remove_project(project)


def test_folders_of_the_same_name_get_their_own_project_and_images(twins) -> None:
    first, second = (envfile.read(project.root / ".env") for project in twins)
    for name in ("COMPOSE_PROJECT_NAME", "TRAIN_IMAGE_NAME", "FULL_IMAGE_NAME"):
        assert first[name] != second[name], name
    assert first["COMPOSE_PROJECT_NAME"] == compose.checkout_identity(twins[0].root)
    assert first["TRAIN_IMAGE_NAME"] == f"{first['COMPOSE_PROJECT_NAME']}/train:latest"
    for project in twins:
        labels = assert_ok(
            project.run(
                "docker", "image", "inspect", "--format",
                "{{index .Config.Labels \"io.torchkiln.checkout\"}}", project.image("train"),
            )
        )  # fmt: skip
        assert labels.strip() == compose.checkout_identity(project.root)
        assert running(project)


def test_a_copied_env_makes_down_up_and_clean_refuse_naming_the_other(twins) -> None:
    first, second = twins
    env_file = first.root / ".env"
    saved = env_file.read_text()
    other_project = envfile.read(second.root / ".env")["COMPOSE_PROJECT_NAME"]
    try:
        env_file.write_text(
            re.sub(r"(?m)^COMPOSE_PROJECT_NAME=.*$", f"COMPOSE_PROJECT_NAME={other_project}", saved)
        )
        for args in (["down"], ["up"], ["clean"]):
            result = first.invoke(*args)
            said = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode == 1, result.stdout
            assert len(said) == 1 and f"checkout at {second.root}" in said[0], said
            assert "invoke env --force" in said[0]
        assert running(second), "the other checkout's container was stopped"
    finally:
        env_file.write_text(saved)


def test_clean_lists_removes_and_says_only_this_checkouts(twins) -> None:
    first, second = twins
    container = running(first)
    image = first.image("train")
    dry = assert_ok(first.invoke("--dry", "clean"))
    assert re.search(r"would remove container \S+-train-1 \(running, [\d.]+ k?B written\)", dry)
    assert re.search(rf"would remove image {re.escape(image)} \(\w{{12}}, [\d.]+ [MG]B\)", dry)
    assert "invoke --dry: nothing was removed" in dry
    assert running(first) == container and image_present(image, first)
    said = assert_ok(first.invoke("clean"))
    assert re.search(r"removed 1 containers and 1 images; freed [\d.]+ \w?B of disk", said), said
    # The image's layers stay as build cache: said in that line, with how much, and why.
    assert re.search(r"of disk; [\d.]+ [MG]B of the images' [\d.]+ [MG]B stay on disk", said), said
    assert "reused by the next invoke build" in said
    assert "the build cache still holds" in said and "--cache --all-checkouts" in said
    assert not running(first) and not image_present(image, first)
    assert running(second) and image_present(second.image("train"), second)


def test_a_dry_clean_of_the_cache_lists_each_record_and_removes_none(twins) -> None:
    """Run under --dry only: a real --cache --all-checkouts would empty a shared engine's cache."""
    second = twins[1]
    refused = second.invoke("clean", "--cache")
    said = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 1 and len(said) == 1, refused.stderr
    assert re.search(
        r"holds [\d.]+ \w?B of layers and [\d.]+ \w?B of sccache, pip and apt", said[0]
    )
    assert running(second), "a refused clean removed something"
    dry = assert_ok(second.invoke("--dry", "clean", "--cache", "--all-checkouts"))
    record = r"^would remove cache record \w+ .*torchkiln.* \([\d.]+ \w?B\)$"
    records = re.findall(record, dry, re.MULTILINE)
    assert records, dry[-2000:]
    assert "docker buildx prune --force --filter 'description~=torchkiln'" in dry
    assert "invoke --dry: nothing was removed" in dry and running(second)


def test_the_suite_never_empties_the_engines_cache_for_room(monkeypatch) -> None:
    """Low disk skips the test with what to do; no prune runs unless the engine is the suite's."""
    ran: list[list[str]] = []
    real_run = subprocess.run

    def recording(command, *args, **kwargs):
        ran.append(list(command))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1e9))
    monkeypatch.delenv(projects.PRUNE_OPT_IN, raising=False)
    with pytest.raises(pytest.skip.Exception, match="deletes no build cache"):
        projects.make_room("pypi")
    assert ran and not [command for command in ran if "prune" in command]

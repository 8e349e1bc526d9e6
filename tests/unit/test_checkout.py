"""A checkout's identity and what is its on the engine; the shell variables of other projects;
what invoke clean removes, lists and says (pure parts; tests/integration run them for real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchkiln import checkout, clean, compose, settings
from torchkiln.errors import UserError


def test_two_folders_of_the_same_name_get_two_identities(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "proj", tmp_path / "b" / "proj"
    one, two = compose.checkout_identity(first), compose.checkout_identity(second)
    assert one != two and one.startswith("proj-") and two.startswith("proj-")
    assert compose.checkout_identity(first) == one  # stable
    # Valid as a Compose project and an image repository.
    for name in ("My Repo", "a__b", "ünï", "...", "x" * 80):
        identity = compose.checkout_identity(tmp_path / name)
        settings.validate({"COMPOSE_PROJECT_NAME": identity}, ["COMPOSE_PROJECT_NAME"])
        settings.validate({"TRAIN_IMAGE_NAME": f"{identity}/train:latest"}, ["TRAIN_IMAGE_NAME"])
        assert len(identity) <= 49


def container(name: str, working_dir: str, project: str = "proj") -> checkout.Container:
    return checkout.Container(f"id-{name}", name, "running", project, working_dir, 0)


def image(
    image_id: str, project: str = "proj", identity: str = "", tags=("proj/train:latest",)
) -> checkout.Image:
    return checkout.Image(image_id, tuple(tags), 5_630_000_000, project, identity)


def test_another_checkouts_container_in_the_project_is_refused_by_name(tmp_path: Path) -> None:
    mine, other = tmp_path / "a" / "proj", tmp_path / "b" / "proj"
    found = [container("proj-train-1", str(mine / "compose")), container("x", str(other))]
    assert checkout.foreign_containers(found, mine) == [found[1]]
    with pytest.raises(UserError) as caught:
        checkout.plan_clean(found, [], "proj", "proj-1", mine)
    message = str(caught.value)
    assert f"checkout at {other.parent}" in message and "invoke env --force" in message


def test_clean_takes_only_images_with_this_checkouts_identity(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    images = [
        image("sha256:mine", identity="proj-1"),
        image("sha256:old-name", project="old", identity="proj-1"),
        image("sha256:theirs", identity="proj-2"),
        image("sha256:plain"),  # no checkout label: another checkout uses the project
    ]
    plan = checkout.plan_clean([], images, "proj", "proj-1", root)
    assert [item.id for item in plan.images] == ["sha256:mine", "sha256:old-name"]
    assert len(plan.kept) == 2 and "another checkout (proj-2)" in plan.kept[0]
    # With no other checkout in sight, an unlabelled image of the project is this checkout's.
    alone = checkout.plan_clean([], [image("sha256:plain")], "proj", "proj-1", root)
    assert [item.id for item in alone.images] == ["sha256:plain"]


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"COMPOSE_FILE": "/other/docker-compose.yml"}, ["COMPOSE_FILE=/other", "unset"]),
        ({"COMPOSE_PROJECT_NAME": "webapp"}, ["COMPOSE_PROJECT_NAME=webapp", "project webapp"]),
        ({"COMPOSE_PATH_SEPARATOR": ";"}, ["COMPOSE_PATH_SEPARATOR=;"]),
        ({"DOCKER_DEFAULT_PLATFORM": "linux/arm64"}, ["DOCKER_DEFAULT_PLATFORM=linux/arm64"]),
        ({"DOCKER_BUILDKIT": "0"}, ["DOCKER_BUILDKIT=0", "BuildKit off"]),
        ({"COMPOSE_DOCKER_CLI_BUILD": "false"}, ["COMPOSE_DOCKER_CLI_BUILD"]),
    ],
)
def test_another_projects_shell_variables_are_named_with_the_fix(environ, words) -> None:
    dotenv = {"COMPOSE_FILE": "compose/compose.yaml:compose/cpu.yaml", "COMPOSE_PROJECT_NAME": "p"}
    with pytest.raises(UserError) as caught:
        settings.check_environment(environ, dotenv, machine="x86_64")
    for word in words:
        assert word in str(caught.value)
    with pytest.raises(UserError):
        settings.resolve({}, environ, dotenv)


@pytest.mark.parametrize(
    "environ",
    [
        {"COMPOSE_FILE": "compose/compose.yaml:compose/cpu.yaml"},  # the same as .env
        {"COMPOSE_PROFILES": "other"},  # Compose ignores a profile it does not have
        {"DOCKER_DEFAULT_PLATFORM": "linux/amd64"},
        {"DOCKER_BUILDKIT": "1"},
    ],
)
def test_harmless_shell_variables_pass(environ) -> None:
    dotenv = {"COMPOSE_FILE": "compose/compose.yaml:compose/cpu.yaml", "COMPOSE_PROJECT_NAME": "p"}
    settings.check_environment(environ, dotenv, machine="x86_64")


def test_compose_env_files_must_name_this_checkouts_env(tmp_path: Path) -> None:
    assert checkout.env_files_problem({}, tmp_path) == ""
    assert checkout.env_files_problem({"COMPOSE_ENV_FILES": str(tmp_path / ".env")}, tmp_path) == ""
    problem = checkout.env_files_problem({"COMPOSE_ENV_FILES": "/other/.env"}, tmp_path)
    assert "COMPOSE_ENV_FILES=/other/.env" in problem and "unset" in problem


def test_no_env_file_is_named_with_invoke_env(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"\.env does not exist; run invoke env first"):
        checkout.project_of(tmp_path, {})


def test_down_works_with_a_env_whose_other_settings_are_wrong(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("COMPOSE_PROJECT_NAME=proj-1\nCCA=86\n")
    assert checkout.project_of(tmp_path, {})[1] == "proj-1"


DF_VERBOSE = {
    "BuildCache": [
        {"ID": "a1*", "Description": 'cached mount /root/.cache/ccache from exec /bin/sh with id '
         '"torchkiln-sccache"', "Size": "2.5GB", "CacheType": "exec.cachemount"},
        {"ID": "b2", "Description": "mount / from exec /opt/torchkiln-scripts/build-wheel.sh",
         "Size": "3.1GB", "CacheType": "regular"},
        {"ID": "c3", "Description": "mount / from exec apt-get install gcc", "Size": "400MB",
         "CacheType": "regular"},
    ]
}  # fmt: skip


def test_the_cache_is_described_as_shared_and_removed_only_when_asked() -> None:
    records = clean.cache_records(json.dumps(DF_VERBOSE))
    assert [record.torchkiln for record in records] == [True, True, False]
    refusal = clean.cache_refusal(records)
    assert "3.10 GB of layers and 2.50 GB of sccache, pip and apt cache mounts" in refusal
    assert "shared by every torchkiln checkout" in refusal and "--all-checkouts" in refusal
    assert "\n" not in refusal


def test_clean_lists_each_thing_with_its_size_and_says_what_remains() -> None:
    plan = checkout.CleanPlan(
        [checkout.Container("c", "proj-train-1", "running", "proj", "/x", 12_300)],
        [image("sha256:0123456789abcdef"), image("sha256:fedcba", tags=())],
        ["kept image other"],
    )
    records = clean.cache_records(json.dumps(DF_VERBOSE))
    lines = clean.listing(plan, [], dry=True)
    assert lines == [
        "would remove container proj-train-1 (running, 12.30 kB written)",
        "would remove image proj/train:latest (0123456789ab, 5.63 GB)",
        "would remove image <untagged: left by a rebuild> (fedcba, 5.63 GB)",
        "kept image other",
    ]
    said = clean.outcome(plan, 0.01e9, records)
    assert said[0] == (
        "removed 1 containers and 2 images; freed 10.00 MB of disk; 11.25 GB of the images' "
        "11.26 GB stay on disk as layers of the build cache and the base images, reused by the "
        "next invoke build"
    )
    # All of it freed, or nothing measured (a dry run): nothing to say of the cache.
    assert clean.outcome(plan, 11.26e9, records)[0].endswith("freed 11.26 GB of disk")
    assert clean.outcome(plan, None, records)[0] == "removed 1 containers and 2 images"
    images_only = checkout.CleanPlan([], [image("sha256:0123456789abcdef")], [])
    assert "5.62 GB of the images' 5.63 GB stay" in clean.outcome(images_only, 0.01e9, [])[0]
    assert "an image's layers stay there" in said[1] and "5.60 GB" not in said[1]
    assert "--cache --all-checkouts" in said[1]


@pytest.mark.parametrize(
    ("text", "size"), [("5.63GB", 5.63e9), ("11.1kB", 11_100), ("0B", 0), ("?", 0)]
)
def test_sizes_read_as_docker_prints_them(text: str, size: float) -> None:
    assert clean.size_bytes(text) == pytest.approx(size)

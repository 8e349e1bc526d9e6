"""Remote builders, registry cache and push: decided by pure functions, checked in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from invoke import Config, MockContext, Result

from torchkiln import build, buildlog, buildplan, compose, doctor, inputs
from torchkiln.errors import UserError

REPOSITORY = "registry.example.com/team/torchkiln"
DOTENV = {"UID": "1000", "GID": "1000", "CCA": "8.6", "COMPOSE_PROJECT_NAME": "demo"}
CLASSIC_DOCKER = "Name:   default\nDriver: docker\n\nNodes:\nName: default\nEndpoint: default\n"
CONTAINERD_DOCKER = CLASSIC_DOCKER + " org.mobyproject.buildkit.worker.containerd.uuid: 66b5\n"
CONTAINER_DRIVER = "Name:   kiln\nDriver: docker-container\n"


def make_plan(tmp_path: Path, dotenv: dict | None = None, **options) -> buildplan.BuildPlan:
    return build.plan(
        tmp_path,
        inputs.BuildOptions(**options),
        environ={},
        dotenv={**DOTENV, **(dotenv or {})},
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("value", "export", "spec"),
    [
        ("reg.io/a/b:cache", False, "type=registry,ref=reg.io/a/b:cache"),
        ("reg.io/a/b:cache", True, "type=registry,ref=reg.io/a/b:cache,mode=max"),
        ("type=registry,ref=reg.io/a/b:c", True, "type=registry,ref=reg.io/a/b:c,mode=max"),
        ("type=registry,ref=r.io/a:c,mode=min", True, "type=registry,ref=r.io/a:c,mode=min"),
        ("type=local,dest=/tmp/cache", True, "type=local,dest=/tmp/cache"),
        ("type=gha", False, "type=gha"),
    ],
    ids=["ref-import", "ref-export-max", "spec-gets-max", "spec-keeps-mode", "local", "gha"],
)
def test_cache_values_become_buildx_specs(value: str, export: bool, spec: str) -> None:
    assert inputs.cache_spec(value, export=export) == spec


@pytest.mark.parametrize("value", ["", "ref=reg.io/a:c", "reg.io/a:c mode=max"])
def test_malformed_cache_values_are_refused(value: str) -> None:
    with pytest.raises(UserError, match="cache"):
        inputs.cache_spec(value, export=True)


@pytest.mark.parametrize(
    ("options", "dotenv", "message"),
    [
        ({"push": True}, {}, "--push needs REGISTRY_IMAGE"),
        ({"cache_from": True}, {}, "--cache-from without a value uses REGISTRY_IMAGE"),
        ({"cache_to": True}, {}, "--cache-to without a value uses REGISTRY_IMAGE"),
        ({}, {"REGISTRY_IMAGE": f"{REPOSITORY}:train"}, "REGISTRY_IMAGE .* without a tag"),
        ({}, {"REGISTRY_IMAGE": "torchkiln"}, "REGISTRY_IMAGE 'torchkiln' is not valid"),
        ({"builder": "my builder"}, {}, "BUILDX_BUILDER 'my builder' is not valid"),
    ],
    ids=["push-no-repo", "cache-from-no-repo", "cache-to-no-repo", "tag", "no-slash", "builder"],
)
def test_registry_mistakes_are_refused_before_anything_runs(
    tmp_path: Path, options: dict, dotenv: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        make_plan(tmp_path, dotenv, **options)


def test_bare_flags_use_the_registry_image_setting(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path, {"REGISTRY_IMAGE": REPOSITORY}, cache_from=True, cache_to=True, push=True
    )
    assert plan.cache_from == [f"type=registry,ref={REPOSITORY}:train-cache"]
    assert plan.cache_to == [f"type=registry,ref={REPOSITORY}:train-cache,mode=max"]
    assert plan.push == ["docker", "push", f"{REPOSITORY}:train"]
    document = json.loads(plan.override_text())["services"]["train"]["build"]
    assert document["cache_from"] == plan.cache_from
    assert document["cache_to"] == plan.cache_to
    assert document["tags"] == [f"{REPOSITORY}:train"]
    assert plan.build[plan.build.index(plan.override_path) - 1] == "-f"


def test_builder_comes_from_flag_environment_or_dotenv(tmp_path: Path) -> None:
    assert make_plan(tmp_path).builder == ""
    assert make_plan(tmp_path, {"BUILDX_BUILDER": "team"}).builder == "team"
    plan = make_plan(tmp_path, {"BUILDX_BUILDER": "team"}, builder="kiln")
    assert plan.build[-3:] == ["--builder", "kiln", "train"]
    assert "BUILDX_BUILDER" not in plan.build_args, "the builder is an option, not a build arg"


def test_dry_run_prints_build_push_and_up(tmp_path: Path, monkeypatch) -> None:
    plan = make_plan(
        tmp_path, {"REGISTRY_IMAGE": REPOSITORY}, builder="kiln", cache_to=True, push=True
    )
    checked = []
    monkeypatch.setattr(doctor, "require_ready", lambda values, up, service: checked.append(up))
    context = MockContext(config=Config(overrides={"run": {"dry": True}}), run=Result())
    build.build_service(context, plan)
    assert checked == [True], "--dry refuses what the real build refuses"
    commands = [call.args[0] for call in context.run.call_args_list]
    assert commands == [
        "docker compose --env-file .env -f compose/compose.yaml -f "
        ".torchkiln/dry-build-train.yaml --progress plain build --builder kiln train",
        f"docker push {REPOSITORY}:train",
        "docker compose up --detach --no-build train",
    ]
    # The printed command runs as printed: the override it names exists. A dry run writes it
    # beside the real build's, and records nothing a later command reads.
    assert (tmp_path / ".torchkiln" / "dry-build-train.yaml").is_file()
    assert sorted(path.name for path in (tmp_path / ".torchkiln").iterdir()) == [
        "dry-build-train.yaml"
    ]


@pytest.mark.parametrize(
    ("inspect", "problem"),
    [
        (CLASSIC_DOCKER, "containerd image store"),
        (CONTAINERD_DOCKER, None),
        (CONTAINER_DRIVER, None),
    ],
    ids=["classic-store-refused", "containerd-store", "docker-container"],
)
def test_cache_export_needs_a_capable_builder(inspect: str, problem: str | None) -> None:
    found = compose.cache_export_problem(inspect, "")
    assert found is None if problem is None else problem in found


def test_missing_builder_is_refused_in_seconds() -> None:
    context = MockContext(run={"docker buildx inspect nope": Result(exited=1)})
    with pytest.raises(UserError, match="builder 'nope' does not exist"):
        build.check_builder(context, "nope", export_cache=False)
    context = MockContext(run={"docker buildx inspect": Result(CLASSIC_DOCKER)})
    with pytest.raises(UserError, match="cannot export cache"):
        build.check_builder(context, "", export_cache=True)


def test_wheels_import_the_cache_with_the_builder() -> None:
    command = compose.wheels_command(
        "train", {}, {}, "", "/tmp/out", builder="kiln", cache_from=["type=registry,ref=r/a:c"]
    )
    assert command[:9] == [
        "docker", "buildx", "build", "--progress", "plain",
        "--builder", "kiln", "--cache-from", "type=registry,ref=r/a:c",
    ]  # fmt: skip


def test_a_step_shown_twice_counts_as_cached_when_one_vertex_was() -> None:
    log = (
        "#11 [base 2/2] RUN install-python.sh\n#11 CACHED\n\n"
        "#22 [base 2/2] RUN install-python.sh\n#22 DONE 0.0s\n\n"
        "#23 [venv 1/2] RUN install-wheels.sh\n#23 DONE 3.1s\n"
    )
    assert buildlog.executed_steps(log) == [("venv", "RUN")]

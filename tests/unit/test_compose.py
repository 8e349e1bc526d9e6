"""Command lines and build plans, with no Docker: pure functions and invoke.MockContext."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from invoke import Config, MockContext, Result

from torchkiln import build, compose, wheels
from torchkiln.errors import UserError

DOTENV = {"UID": "1000", "GID": "1000", "CCA": "8.6", "COMPOSE_PROJECT_NAME": "demo"}


def make_plan(tmp_path: Path, **options) -> build.BuildPlan:
    environ = options.pop("environ", {})
    dotenv = {**DOTENV, **options.pop("dotenv", {})}
    return build.plan(
        tmp_path, options.pop("service", "train"), environ=environ, dotenv=dotenv, **options
    )


def test_plain_build_is_compose_build_then_up(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    assert plan.build == ["docker", "compose", "--progress", "plain", "build", "train"]
    assert plan.start == ["docker", "compose", "up", "--detach", "train"]


@pytest.mark.parametrize(
    ("options", "prefix"),
    [
        ({"cca": "9.0"}, ["env", "CCA=9.0"]),
        ({"torch": "2.13.0"}, ["env", "PYTORCH_VERSION=2.13.0", "TORCHVISION_VERSION=0.28.0"]),
    ],
    ids=["cca-flag", "torch-flag-picks-torchvision"],
)
def test_flags_become_an_env_prefix(tmp_path: Path, options: dict, prefix: list[str]) -> None:
    plan = make_plan(tmp_path, **options)
    assert plan.build[: len(prefix)] == prefix
    assert plan.build[len(prefix) : len(prefix) + 2] == ["docker", "compose"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cca": "86"}, "not a compute capability"),
        ({"cca": "3.5"}, "cannot be built with CUDA 13.0.2"),
        ({"torch": "2.13.0", "dotenv": {"TORCHVISION_VERSION": "0.29.1"}}, "matching pair"),
        ({"service": "web"}, "does not exist"),
        ({"sources": ["torch=/nowhere"]}, "NAME=DIR"),
        ({"wheelhouse": "/nowhere"}, "holds no torch-*.whl"),
        ({"ca_bundle": "/nowhere.pem"}, "not a readable file"),
    ],
    ids=["cca-86", "cca-35-cuda13", "forced-mismatch", "service", "source", "wheelhouse", "ca"],
)
def test_bad_input_is_refused_before_anything_runs(
    tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message.replace("*", r"\*")):
        make_plan(tmp_path, **options)


def test_sources_add_an_override_file_and_the_env_file(tmp_path: Path) -> None:
    checkout = tmp_path / "pytorch"
    checkout.mkdir()
    (checkout / "setup.py").write_text("")
    plan = make_plan(tmp_path, sources=[f"pytorch={checkout}"])
    assert plan.contexts == {"pytorch-src": str(checkout)}
    assert plan.build[:4] == ["docker", "compose", "--env-file", ".env"]
    assert plan.build[plan.build.index(plan.override_path) - 1] == "-f"
    document = json.loads(plan.override_text())
    assert document["services"]["train"]["build"]["additional_contexts"] == plan.contexts


def test_dry_run_prints_and_runs_only_what_invoke_skips(tmp_path: Path, capsys) -> None:
    plan = make_plan(tmp_path, cca="9.0")
    context = MockContext(config=Config(overrides={"run": {"dry": True}}), run=Result())
    build.run(context, tmp_path, plan)
    commands = [call.args[0] for call in context.run.call_args_list]
    assert commands == [
        "env CCA=9.0 docker compose --progress plain build train",
        "env CCA=9.0 docker compose up --detach train",
    ]


def test_ccache_rate_sums_every_step() -> None:
    log = "torchkiln-ccache: hits=3 misses=1\nxx\ntorchkiln-ccache: hits=1 misses=3\n"
    assert build.ccache_rate(log) == "50% (4 hits, 4 misses)"
    assert build.ccache_rate("").startswith("no compiler call")


def test_executed_steps_ignore_cached_ones() -> None:
    log = (
        "#5 [train base 1/2] FROM docker.io/local/debian:bookworm\n#5 DONE 0.0s\n"
        "#6 [train base 2/2] RUN install\n#6 CACHED\n"
        "#7 [train venv 2/2] RUN pip install\n#7 DONE 3.0s\n"
    )
    assert build.executed_steps(log) == [("venv", "RUN")]


def test_given_build_args_follow_precedence() -> None:
    args = compose.given_build_args(
        "train", {"CCA": "9.0"}, {"CCA": "8.0", "MAX_JOBS": "4"}, {"CCA": "7.5", "UID": "5"}
    )
    assert args == {"UID": "5", "CCA": "9.0", "MAX_JOBS": "4"}


def test_wheels_command_exports_the_wheels_stage() -> None:
    command = compose.wheels_command(
        "train", {"CCA": "8.6"}, {"wheelhouse": "/w"}, "/ca.pem", "/tmp/out"
    )
    assert command[:3] == ["docker", "buildx", "build"]
    for pair in (
        ["--target", "wheels"],
        ["--output", "type=local,dest=/tmp/out"],
        ["--build-arg", "CCA=8.6"],
        ["--build-context", "wheelhouse=/w"],
        ["--secret", "id=ca_bundle,src=/ca.pem"],
        ["--secret", "id=pip_index_token,env=PIP_INDEX_TOKEN"],
    ):
        position = command.index(pair[0], command.index(pair[0]))
        assert pair[1] in command[position + 1 :]


def test_non_empty_dest_is_refused_without_force(tmp_path: Path) -> None:
    (tmp_path / "old.whl").write_text("")
    (tmp_path / wheels.INFO_NAME).write_text("{}")
    with pytest.raises(UserError, match="not empty"):
        wheels.check_dest(tmp_path, force=False, protected=[])
    wheels.check_dest(tmp_path, force=True, protected=[])


def test_force_replaces_only_an_earlier_export(tmp_path: Path) -> None:
    (tmp_path / "old.whl").write_text("")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds more than an earlier export \(notes.txt\)"):
        wheels.check_dest(tmp_path, force=True, protected=[])


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_dest_holding_the_project_or_home_is_refused(tmp_path: Path, where: str) -> None:
    project = tmp_path / "checkout"
    project.mkdir()
    dest = project if where == "itself" else tmp_path
    with pytest.raises(UserError, match=f"holds {project}"):
        wheels.check_dest(dest, force=True, protected=[project])


def test_build_info_lists_each_wheel_with_its_hash(tmp_path: Path) -> None:
    wheel = tmp_path / "torch-2.14.1-cp312-cp312-linux_x86_64.whl"
    wheel.write_bytes(b"wheel")
    values = build.settings.resolve({}, {}, {"CCA": "8.6;9.0"})
    info = wheels.build_info([wheel], "train", values, "sha256:abc")
    assert info["versions"] == {"torch": "2.14.1"}
    assert info["wheels"][0]["sha256"] == wheels.sha256(wheel)
    assert info["torch_cuda_arch_list"] == "8.6;9.0"
    assert info["base_image"] == "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04"

"""Command lines and build plans, with no Docker: pure functions and invoke.MockContext."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from invoke import Config, MockContext, Result

from torchkiln import (
    build,
    buildlog,
    buildplan,
    buildsummary,
    compose,
    doctor,
    inputs,
    settings,
    wheels,
)
from torchkiln.errors import UserError

DOTENV = {"UID": "1000", "GID": "1000", "CCA": "8.6", "COMPOSE_PROJECT_NAME": "demo"}


def make_plan(tmp_path: Path, **options) -> buildplan.BuildPlan:
    environ = options.pop("environ", {})
    dotenv = {**DOTENV, **options.pop("dotenv", {})}
    return build.plan(
        tmp_path, inputs.BuildOptions(**options), environ=environ, dotenv=dotenv, cwd=tmp_path
    )


def override(plan: buildplan.BuildPlan) -> dict:
    return json.loads(plan.override_text())


def test_build_runs_compose_with_the_override_then_up_without_building(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    assert plan.build == [
        "docker", "compose", "--env-file", ".env", "-f", "compose/compose.yaml",
        "-f", ".torchkiln/build-train.yaml", "--progress", "plain", "build", "train",
    ]  # fmt: skip
    assert plan.start == ["docker", "compose", "up", "--detach", "--no-build", "train"]


def test_every_build_arg_reaches_compose_with_the_checked_value(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, cca="9.0, 8.6;", environ={"MAX_JOBS": "4"})
    args = override(plan)["services"]["train"]["build"]["args"]
    assert set(args) == {*settings.build_args("train"), *settings.DERIVED_BUILD_ARGS}
    assert args["CCA"] == "8.6;9.0"
    assert args["TORCH_CUDA_ARCH_LIST"] == "8.6;9.0"
    assert args["CUDA_ARCHITECTURES"] == "86-real;90-real"
    assert args["MAX_JOBS"] == "4"
    # train builds the default stack whatever .env says for full; references are expanded.
    assert args["BUILD_IMAGE"] == "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04"


def test_train_keeps_the_default_cuda_that_full_overrides(tmp_path: Path) -> None:
    dotenv = {"CUDA_VERSION": "12.8.1"}
    train = override(make_plan(tmp_path, dotenv=dotenv))["services"]["train"]["build"]["args"]
    full = make_plan(tmp_path, service="full", dotenv=dotenv)
    full_args = override(full)["services"]["full"]["build"]["args"]
    assert "12.8.1" not in train["BUILD_IMAGE"]
    assert full_args["CUDA_VERSION"] == "12.8.1"
    assert full_args["BUILD_IMAGE"] == "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04"


def test_a_dollar_in_a_value_is_escaped_for_compose(tmp_path: Path) -> None:
    text = compose.override_text("train", {"PIP_INDEX_URL": "https://h/$x"}, {})
    assert json.loads(text)["services"]["train"]["build"]["args"]["PIP_INDEX_URL"] == (
        "https://h/$$x"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cca": "86"}, "not a compute capability"),
        ({"cca": "3.5"}, "cannot be built with CUDA 13.0.2"),
        ({"cca": "8.6;sm_90"}, "'sm_90'"),
        ({"torch": "2.13.0", "dotenv": {"TORCHVISION_VERSION": "0.29.1"}}, "matching pair"),
        ({"service": "web"}, "does not exist"),
        ({"sources": ["torch=/nowhere"]}, "NAME=DIR"),
        ({"wheelhouse": "/nowhere"}, "holds no torch-*.whl"),
        ({"ca_bundle": "/nowhere.pem"}, "not a readable file"),
    ],
    ids=["cca-86", "cca-35-cuda13", "cca-sm-prefix", "forced-mismatch", "service", "source",
         "wheelhouse", "ca"],
)  # fmt: skip
def test_bad_input_is_refused_before_anything_runs(
    tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message.replace("*", r"\*")):
        make_plan(tmp_path, **options)


def test_sources_and_bundle_go_into_the_override(tmp_path: Path) -> None:
    checkout = tmp_path / "pytorch"
    (checkout / "torch").mkdir(parents=True)
    (checkout / "setup.py").write_text("")
    (checkout / "torch" / "__init__.py").write_text("")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("pem")
    plan = make_plan(tmp_path, sources=[f"pytorch={checkout}"], ca_bundle=str(bundle))
    assert plan.contexts == {"pytorch-src": str(checkout)}
    document = override(plan)
    assert document["services"]["train"]["build"]["additional_contexts"] == plan.contexts
    assert document["secrets"] == {"ca_bundle": {"file": str(bundle)}}


def test_dry_run_writes_the_override_it_names_and_runs_nothing(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    plan = make_plan(tmp_path, cca="9.0")
    checked = []
    monkeypatch.setattr(
        doctor, "require_ready", lambda values, up, service, **_: checked.append(up)
    )
    context = MockContext(config=Config(overrides={"run": {"dry": True}}), run=Result())
    build.build_service(context, plan)
    assert checked == [True], "--dry refuses what the real build refuses"
    commands = [call.args[0] for call in context.run.call_args_list]
    assert commands == [
        "docker compose --env-file .env -f compose/compose.yaml -f "
        ".torchkiln/dry-build-train.yaml --progress plain build train",
        "docker compose up --detach --no-build train",
    ]
    written = json.loads((tmp_path / ".torchkiln" / "dry-build-train.yaml").read_text())
    assert written["services"]["train"]["build"]["args"]["CCA"] == "9.0"
    assert '"CCA": "9.0"' in capsys.readouterr().out


def test_wheels_reuses_the_inputs_of_the_last_build(tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wh"
    wheelhouse.mkdir()
    (wheelhouse / "torch-2.13.0-cp311-none-any.whl").write_text("")
    plan = make_plan(tmp_path, torch="2.13.0", wheelhouse=str(wheelhouse))
    build.write_state(plan)
    options, note = inputs.with_recorded_inputs(tmp_path, inputs.BuildOptions())
    assert options.wheelhouse == str(wheelhouse) and options.torch == "2.13.0"
    assert "--wheelhouse" in note and "--torch 2.13.0" in note
    given, _ = inputs.with_recorded_inputs(tmp_path, inputs.BuildOptions(torch="2.14.1"))
    assert given.torch == "2.14.1", "a flag given now wins over the record"
    assert inputs.with_recorded_inputs(tmp_path, inputs.BuildOptions(service="full"))[1] == ""


def test_the_compile_summary_sums_every_step() -> None:
    log = (
        "torchkiln-sccache: a hits=3 misses=1 remote_hits=0 "
        "remote_errors=0 uncached=0 local=0 dist=0 dist_errors=0 servers=- reasons=-\nxx\n"
        "torchkiln-sccache: b hits=1 misses=3 remote_hits=0 "
        "remote_errors=0 uncached=0 local=0 dist=0 dist_errors=0 servers=- reasons=-\n"
    )
    assert buildsummary.sccache_rate(log) == "50% (4 hits, 4 misses)"
    assert buildsummary.sccache_rate("").startswith("no compile step ran")


def test_executed_steps_ignore_cached_ones() -> None:
    log = (
        "#5 [train base 1/2] FROM docker.io/local/debian:bookworm\n#5 DONE 0.0s\n"
        "#6 [train base 2/2] RUN install\n#6 CACHED\n"
        "#7 [train venv 2/2] RUN pip install\n#7 DONE 3.0s\n"
    )
    assert buildlog.executed_steps(log) == [("venv", "RUN")]


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


def fake_wheel(folder: Path, name: str, version_py: str = "") -> Path:
    path = folder / name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if version_py:
            archive.writestr("torch/version.py", version_py)
    path.write_bytes(buffer.getvalue())
    return path


def export_into(dest: Path, *names: str) -> None:
    """Lay down what an export writes: wheels and a BUILD-INFO.json listing them."""
    dest.mkdir(exist_ok=True)
    wheels_made = [fake_wheel(dest, name) for name in names]
    info = {"wheels": [wheels.wheel_entry(path) for path in wheels_made]}
    (dest / wheels.INFO_NAME).write_text(json.dumps(info))


def test_non_empty_dest_is_refused_without_force(tmp_path: Path) -> None:
    export_into(tmp_path, "torch-1-py3-none-any.whl")
    with pytest.raises(UserError, match="not empty"):
        wheels.check_dest(tmp_path, force=False, protected=[])
    assert sorted(wheels.check_dest(tmp_path, force=True, protected=[])) == sorted(
        ["torch-1-py3-none-any.whl", wheels.INFO_NAME]
    )


@pytest.mark.parametrize(
    "case",
    ["no-marker", "marker-lists-other-file", "wheel-changed", "extra-file", "bad-marker"],
)
def test_force_never_deletes_what_no_export_wrote(tmp_path: Path, case: str) -> None:
    if case == "no-marker":
        fake_wheel(tmp_path, "mine-1-py3-none-any.whl")
    else:
        export_into(tmp_path, "torch-1-py3-none-any.whl")
    if case == "marker-lists-other-file":
        (tmp_path / "torch-1-py3-none-any.whl").rename(tmp_path / "mine-1-py3-none-any.whl")
    elif case == "wheel-changed":
        (tmp_path / "torch-1-py3-none-any.whl").write_bytes(b"user edited")
    elif case == "extra-file":
        (tmp_path / "notes.txt").write_text("mine")
    elif case == "bad-marker":
        (tmp_path / wheels.INFO_NAME).write_text("{not json")
    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(UserError) as caught:
        wheels.check_dest(tmp_path, force=True, protected=[])
    assert "--dest" in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_place_into_an_existing_folder_keeps_its_mode_and_other_files(tmp_path: Path) -> None:
    dest = tmp_path / "dist"
    export_into(dest, "torch-1-py3-none-any.whl")
    dest.chmod(0o2775)
    staging = tmp_path / ".dist-new"
    export_into(staging, "torch-2-py3-none-any.whl")
    wheels.place(staging, dest, wheels.check_dest(dest, force=True, protected=[]))
    assert sorted(path.name for path in dest.iterdir()) == sorted(
        ["torch-2-py3-none-any.whl", wheels.INFO_NAME]
    )
    assert dest.stat().st_mode & 0o7777 == 0o2775


def test_a_new_dest_gets_the_users_umask(tmp_path: Path) -> None:
    import os

    staging = tmp_path / ".dist-new"
    export_into(staging, "torch-2-py3-none-any.whl")
    staging.chmod(0o700)
    old = os.umask(0o022)
    try:
        wheels.place(staging, tmp_path / "dist", [])
    finally:
        os.umask(old)
    assert (tmp_path / "dist").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "dist" / "torch-2-py3-none-any.whl").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_dest_holding_the_project_or_home_is_refused(tmp_path: Path, where: str) -> None:
    project = tmp_path / "checkout"
    project.mkdir()
    dest = project if where == "itself" else tmp_path
    with pytest.raises(UserError, match=f"holds {project}"):
        wheels.check_dest(dest, force=True, protected=[project])


@pytest.mark.parametrize(
    ("version_py", "mode", "cuda", "cca"),
    [
        ("cuda: Optional[str] = '13.0'\n", "source", "13.0", "8.6;9.0"),
        ("cuda = None\n", "wheels", None, None),
        ("cuda: Optional[str] = '13.0'\n", "wheels", "13.0", None),
    ],
    ids=["source-cuda", "cpu-wheel", "official-cuda-wheel"],
)
def test_build_info_describes_the_wheels_as_they_are(tmp_path, version_py, mode, cuda, cca):
    wheel = fake_wheel(tmp_path, "torch-2.14.1-cp312-cp312-linux_x86_64.whl", version_py)
    values = settings.resolve({}, {}, {"CCA": "9.0 8.6", "BUILD_MODE": mode})
    info = wheels.build_info([wheel], "train", values, "sha256:abc")
    assert info["versions"] == {"torch": "2.14.1"}
    assert info["wheels"][0]["sha256"] == wheels.sha256(wheel)
    assert info["cuda_version"] == cuda
    assert info["cca"] == cca
    assert info["torch_cuda_arch_list"] == cca
    assert info["base_image"] == "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04"


def test_task_flags_become_options() -> None:
    flags = {"c": object(), "service": "full", "source": ["vision=../v"], "no_up": True}
    options = inputs.BuildOptions.from_flags({**flags, "cca": "8.6", "push": False})
    assert (options.service, options.sources, options.up, options.cca) == (
        "full",
        ["vision=../v"],
        False,
        "8.6",
    )
    assert inputs.BuildOptions.from_flags({"service": "train"}).up is True


@pytest.mark.parametrize(
    ("name", "files", "missing"),
    [
        ("pytorch", ["setup.py"], "torch/__init__.py"),
        ("pytorch", ["torch/__init__.py"], "setup.py or pyproject.toml"),
        ("vision", ["setup.py", "torch/__init__.py"], "torchvision/__init__.py"),
        ("magma", ["setup.py"], "CMakeLists.txt"),
        ("magma", ["CMakeLists.txt"], "include/magma.h or include/magma_v2.h"),
    ],
    ids=[
        "project-not-torch",
        "no-build-file",
        "torch-as-vision",
        "pip-as-magma",
        "cmake-not-magma",
    ],
)
def test_a_checkout_of_something_else_is_refused_in_seconds(tmp_path, name, files, missing):
    for file in files:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text("")
    with pytest.raises(
        UserError, match=re.escape(f"holds no {missing}; give the root of a {name}")
    ):
        inputs.parse_sources([f"{name}={tmp_path}"], tmp_path)


def test_stage_times_from_the_log() -> None:
    log = (
        "#7 [train torch-build 1/1] RUN build-wheel.sh\n#7 DONE 3600.5s\n"
        "#8 [train vision-build 1/1] RUN build-wheel.sh\n#8 DONE 300.0s\n"
        "#9 [train base 1/2] FROM local/debian\n#9 DONE 0.1s\n"
        "#10 [train torch-build 1/1] RUN again\n#10 CACHED\n"
    )
    assert buildlog.stage_seconds(log) == [("torch-build", 3600.5), ("vision-build", 300.0),
                                       ("base", 0.1)]  # fmt: skip


def test_a_failure_points_at_error_lines_only_when_there_are_some() -> None:
    from torchkiln.runner import Streamed

    with_error = buildsummary.failure_line("build", Streamed(17, "#9 ERROR: process failed\n"))
    assert "the ERROR lines above name the step" in with_error
    without = buildsummary.failure_line("build", Streamed(1, "something else went wrong\n"))
    assert "ERROR lines" not in without and "its last lines above say why" in without


@pytest.mark.parametrize(
    "record",
    [
        {"inputs": ["cca", "9.0"]},
        {"inputs": "cca=9.0"},
        {"inputs": None},
        {"inputs": {"torch": 2.14, "extensions": [3], "cca": {"x": 1}}},
        ["inputs"],
    ],
    ids=["a-list", "a-text", "null", "values-of-other-types", "not-an-object"],
)
def test_a_damaged_build_record_is_no_record(tmp_path: Path, record) -> None:
    (tmp_path / ".torchkiln").mkdir()
    (tmp_path / ".torchkiln" / "build-train.json").write_text(json.dumps(record))
    given = inputs.BuildOptions(cca="8.6")
    assert inputs.with_recorded_inputs(tmp_path, given) == (given, "")


def test_executed_steps_read_a_stage_of_ten_or_more_steps() -> None:
    """BuildKit pads the step number of a stage with ten or more steps: `[train train  5/10]`."""
    log = (
        "#51 [train train  5/10] RUN --mount=type=bind,source=docker/requirements.txt x\n"
        "#51 DONE 9.0s\n"
        "#55 [train train  9/10] RUN python -m torchkiln.inimage.links\n#55 CACHED\n"
        "#56 [train train 10/10] WORKDIR /opt/project\n#56 DONE 0.0s\n"
    )
    assert buildlog.executed_steps(log) == [("train", "RUN"), ("train", "WORKDIR")]

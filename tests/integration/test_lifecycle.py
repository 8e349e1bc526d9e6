"""What happens around a build on the real engine: Ctrl-C and SIGTERM, two builds at once,
`invoke clean`, `invoke down`, tasks on an unbuilt image, and `.env` files that are not right.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from projects import (
    BASE,
    Project,
    assert_ok,
    fixture_sources,
    make_project,
    remove_project,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


def start(project: Project, *args: str) -> subprocess.Popen[str]:
    """Start an invoke task with no terminal on stdin, as CI and scripts do."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=project.root,
        env=project.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(proc: subprocess.Popen[str], marker: str, timeout: float = 600) -> str:
    """Read the task's output until a line holds marker (a step is running); return it so far."""
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    pytest.fail(f"{marker!r} never appeared:\n{''.join(seen)[-3000:]}")


def image_id(project: Project) -> str:
    found = project.run("docker", "image", "inspect", "--format", "{{.Id}}", project.image("train"))
    return found.stdout.strip() if found.returncode == 0 else ""


# A build step that runs long enough to be interrupted: the fixture torch's build, made slow.
SLOW = "import time; time.sleep(120)\n"


def slow_sources(project: Project) -> list[str]:
    """The fixtures, with a setup.py that sleeps (a stand-in for hours of compiling)."""
    slow = project.root / "slow-pytorch"
    shutil.copytree(project.root / "tests" / "fixtures" / "pytorch", slow)
    setup = slow / "setup.py"
    setup.write_text(SLOW + setup.read_text().replace('"""A stand-in', '"""Slow: a stand-in', 1))
    vision = project.root / "tests" / "fixtures" / "vision"
    return ["--source", f"pytorch={slow}", "--source", f"vision={vision}"]


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"]
)
def test_a_signal_to_invoke_alone_stops_the_build_and_says_so(tmp_path, signum, code) -> None:
    project = make_project(tmp_path, "signal")
    try:
        before = image_id(project)
        proc = start(project, "build", "--no-cache", *slow_sources(project))
        wait_for_step(proc, "torchkiln-jobs: pytorch")
        time.sleep(3)
        proc.send_signal(signum)  # to invoke alone, not its process group
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == code, out[-2000:] + err
        said = [line for line in err.splitlines() if line.strip()]
        assert said == [
            f"interrupted ({signal.Signals(signum).name}); nothing was changed: the image and "
            "dist/ are as before, and invoke build again resumes from BuildKit's cache"
        ]
        assert "Traceback" not in out + err and "I/O operation on closed file" not in err
        assert image_id(project) == before, "an interrupted build replaced the image"
        # No build of this project left running, and the lock went with the process.
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        left = [line for line in ps.splitlines() if "compose" in line and project.name in line]
        assert left == [], left
        assert (project.root / ".torchkiln" / "lock").read_text() == ""
    finally:
        remove_project(project)


def test_a_second_build_in_the_same_checkout_is_refused_with_the_reason(tmp_path) -> None:
    project = make_project(tmp_path, "lock")
    try:
        first = start(project, "build", "--no-cache", "--no-up", *slow_sources(project))
        wait_for_step(first, "torchkiln-jobs: pytorch")
        second = project.invoke("build", "--no-up", *fixture_sources(project))
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
        assert second.returncode == 1
        said = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(said) == 1 and "another invoke build or wheels is running" in said[0], said
        assert "cpu.yaml" not in said[0]  # no misdiagnosis
        assert f"pid {first.pid}" in said[0]
    finally:
        remove_project(project)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """A CPU fixture image, built and started."""
    project = make_project(tmp_path_factory.mktemp("life"), "life")
    try:
        assert_ok(project.invoke("build", *fixture_sources(project)))
        yield project
    finally:
        remove_project(project)


def test_down_stops_the_shell_with_a_signal_it_honours(built) -> None:
    container = assert_ok(built.run("docker", "compose", "ps", "--quiet", "train")).strip()
    assert_ok(built.invoke("down"))
    state = built.run("docker", "inspect", "--format", "{{.State.ExitCode}}", container)
    # Gone (down removes it) or, if inspected in time, not killed after the 10 s grace (137).
    assert state.returncode != 0 or state.stdout.strip() != "137"
    stop_signal = assert_ok(built.run("docker", "compose", "config", "--format", "json", "train"))
    assert json.loads(stop_signal)["services"]["train"]["stop_signal"] == "SIGHUP"
    assert_ok(built.invoke("up"))


def test_tasks_on_an_unbuilt_image_refuse_instead_of_building(built) -> None:
    for task in ("up", "shell", "logs"):
        result = built.invoke(task, "--service", "full")
        said = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1, result.stdout
        assert said == [
            f"error: image {built.image('full')} of full is not built; run invoke build "
            f"--service full"
        ]
    assert "Building" not in result.stdout + result.stderr


def test_logs_of_a_quiet_service_say_why(built) -> None:
    shown = assert_ok(built.invoke("logs"))
    assert "train has logged nothing" in shown and ".torchkiln/build-train.log" in shown


def test_clean_removes_this_projects_images_and_nothing_else(tmp_path) -> None:
    project = make_project(tmp_path, "clean")
    other = make_project(tmp_path, "other")
    try:
        assert_ok(project.invoke("build", "--no-up", *fixture_sources(project)))
        first = image_id(project)
        # A rebuild with a new label leaves the old image untagged (dangling).
        changed = Project(project.root, project.name, {**project.env, "MAX_JOBS": "1"})
        assert_ok(changed.invoke("build", "--no-up", *fixture_sources(project)))
        assert image_id(project) != first
        assert_ok(other.invoke("build", "--no-up", *fixture_sources(other)))
        dry = assert_ok(project.invoke("--dry", "clean"))
        assert "docker compose down" in dry and image_id(project)
        # Each image it would remove, the one the rebuild left untagged included, with its size.
        assert f"would remove image {project.image('train')} (" in dry
        assert "would remove image <untagged: left by a rebuild>" in dry
        said = assert_ok(project.invoke("clean"))
        assert "removed 0 containers and 2 images; freed" in said, said
        assert image_id(project) == ""
        gone = project.run("docker", "image", "inspect", first)
        assert gone.returncode != 0, "the dangling image of the rebuild is still there"
        assert image_id(other), "clean removed another project's image"
    finally:
        remove_project(project)
        remove_project(other)


def test_a_dotenv_that_is_a_directory_gets_the_same_fix_from_every_task(tmp_path) -> None:
    project = make_project(tmp_path, "envdir")
    settings_text = (project.root / ".env").read_text()
    try:
        (project.root / ".env").unlink()
        (project.root / ".env").mkdir()
        for args in (["build"], ["env"], ["doctor"]):
            result = project.invoke(*args)
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert "Traceback" not in output
            assert ".env is a directory" in output and "move it away" in output, output
    finally:
        (project.root / ".env").rmdir()
        (project.root / ".env").write_text(settings_text)
        remove_project(project)


def test_a_misspelt_key_is_named_with_the_closest_setting(tmp_path) -> None:
    project = make_project(tmp_path, "typo")
    try:
        with (project.root / ".env").open("a") as handle:
            handle.write("CCA_LIST=8.6\n")
        doctor = project.invoke("doctor")
        assert "CCA_LIST is not a torchkiln setting" in doctor.stdout
        assert "did you mean CCA?" in doctor.stdout
        dry = project.invoke("--dry", "build", *fixture_sources(project))
        assert "warning: .env: CCA_LIST is not a torchkiln setting" in dry.stderr
    finally:
        remove_project(project)


def test_env_force_keeps_what_the_user_set(tmp_path) -> None:
    project = make_project(tmp_path, "keep")
    try:
        with (project.root / ".env").open("a") as handle:
            handle.write("BUILD_MODE=wheels\nPYTHON_VERSION=3.11\n")
        result = assert_ok(project.invoke("env", "--force", "--cca", "8.6"))
        text = (project.root / ".env").read_text()
        for line in ("BUILD_MODE=wheels", "PYTHON_VERSION=3.11", f"BUILD_IMAGE={BASE}"):
            assert f"\n{line}\n" in text, line
            assert f"kept your {line}" in result
    finally:
        remove_project(project)


def test_dry_run_refuses_what_the_build_refuses(tmp_path) -> None:
    project = make_project(tmp_path, "drynv", COMPOSE_FILE="compose/compose.yaml")
    try:
        if "nvidia" in project.run("docker", "info", "--format", "{{json .Runtimes}}").stdout:
            pytest.skip("this engine has the NVIDIA runtime")
        result = project.invoke("--dry", "build", *fixture_sources(project))
        assert result.returncode == 1
        assert "nvidia runtime" in result.stderr
        assert not (project.root / ".torchkiln" / "build-train.yaml").exists()
    finally:
        remove_project(project)

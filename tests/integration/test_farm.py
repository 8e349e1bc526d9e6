"""The build farm for real: `invoke farm up` (a scheduler and a build server as the Compose
services) and `invoke farm join` (a second server, as another machine would start it) on this
engine; the PyTorch stand-in with 24 more C++ and 4 more CUDA translation units, built by the
product's own torch-build stage through the farm: both servers' counts rise, the wheel has the
CCA's SASS. A wrong token is refused in one line before any compile; no token reaches an output,
a .torchkiln file outside farm/, or the images' history; a farm stopped during the compile step
costs a fallback that the summary names, and the wheel compiled here holds what the farm's holds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import free_port
from farmunits import add_units, container_address
from farmunits import farm_counts as counts
from projects import Project, assert_ok, make_project, remove_project

from torchkiln.inimage import fatbin

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

# The wheel the farm compiled, for the fallback test to set beside the one compiled here.
FARM_WHEEL: list[Path] = []


def wheel_contents(wheel: Path, tmp: Path) -> dict[str, object]:
    """Each file of a wheel: its bytes, or for a library the archs of its device code (nvcc
    writes its temporary file's name, which holds a process id, into every object: two builds of
    one library never agree in bytes); RECORD (the files' hashes) left out."""
    contents: dict[str, object] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".dist-info/RECORD"):
                continue
            data = archive.read(name)
            if ".so" in Path(name).suffixes:
                (tmp / "lib.so").write_bytes(data)
                contents[name] = fatbin.read_archs(tmp / "lib.so")
            elif name == "torch/build_env.json":  # the stand-in's record, less a temporary folder
                recorded = json.loads(data)
                recorded.get("torch_cmake", {}).pop("torch_dir", None)
                contents[name] = recorded
            else:
                contents[name] = data
    return contents


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, str]]:
    """A scheduler and two servers (farm up, then farm join as a second machine would)."""
    scheduler_port = str(free_port())
    project = make_project(
        tmp_path_factory.mktemp("farm"),
        "farm",
        CUDA_FROM="pypi",
        FARM_IMAGE="local/debian:bookworm",
        FARM_SCHEDULER_PORT=scheduler_port,
        FARM_SERVER_PORT=str(free_port()),
    )
    project.env["FARM_IMAGE_NAME"] = f"torchkiln-test/{project.name}-farm:latest"
    try:
        up = assert_ok(project.invoke("farm", "up"))
        assert "wrote .torchkiln/farm/jwt-key (0600)" in up
        folder = project.root / ".torchkiln" / "farm"
        for name in ("jwt-key", "client-token"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600
        # A second machine reaches the scheduler at its address; here, the container's.
        url = f"http://{container_address(project, 'farm-scheduler')}:10600"
        joined = project.invoke("farm", "join", "--url", url, "--port", str(free_port()))
        assert_ok(joined)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = project.invoke("farm", "status")
            if "2 servers" in status.stdout:
                break
            time.sleep(2)
        if "2 servers" not in status.stdout:  # say why: the containers' own words
            logs = project.run(
                *("docker", "compose", "--profile", "farm", "logs", "--no-color", "--tail", "40"),
                timeout=60,
            )
            pytest.fail(f"{status.stdout}{status.stderr}\n{logs.stdout[-6000:]}{logs.stderr}")
        yield project, (folder / "client-token").read_text().strip()
    finally:
        project.invoke("farm", "down")
        project.run("docker", "compose", "--profile", "farm", "down", "--volumes", timeout=120)
        project.run("docker", "image", "rm", "--force", project.env["FARM_IMAGE_NAME"])
        remove_project(project)


def test_both_servers_compile_the_stand_in_and_no_token_leaks(
    farm: tuple[Project, str], tmp_path: Path
) -> None:
    project, token = farm
    output = assert_ok(project.invoke("wheels", "--dest", str(tmp_path), *add_units(project)))
    local, dist, errors, servers = counts(output)
    print(f"\nfarm: {dist} compiled remotely {servers}, {local} locally, {errors} fell back")
    assert len(servers) == 2 and all(count > 0 for count in servers.values()), servers
    # sccache compiles here a job the farm failed (a busy server, a toolchain upload racing the
    # first jobs) and counts it: on a 2-core machine one job did, in 1 of 4 runs. A farm that
    # works takes nearly all; one that does not shows in the counts above.
    assert errors * 10 <= dist, (errors, dist)
    assert "farm: " in next(line for line in output.splitlines() if line.startswith("sccache:"))
    # The wheel's CUDA library holds exactly the CCA's SASS (sm_86), compiled on the farm.
    (wheel,) = tmp_path.glob("torch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        library = next(name for name in archive.namelist() if "libtorch_cuda" in name)
        (tmp_path / "lib.so").write_bytes(archive.read(library))
    assert fatbin.read_archs(tmp_path / "lib.so").sass == ["sm_86"]
    FARM_WHEEL.append(wheel)
    # The token: in no output, no state file but its own, no image history or inspect.
    assert token not in output
    for file in (project.root / ".torchkiln").rglob("*"):
        if file.is_file() and "farm" not in file.parts:
            assert token not in file.read_text(errors="replace"), file
    for image in (project.env["FARM_IMAGE_NAME"],):
        for command in (["history", "--no-trunc", image], ["inspect", image]):
            shown = project.run("docker", *command).stdout
            assert shown and token not in shown, command
    status = assert_ok(project.invoke("farm", "status"))
    assert re.search(r"server \S+ \(this machine\): [1-9]\d* compiles completed", status), status


def test_a_server_signs_its_token_with_a_key_that_begins_with_a_dash(
    farm: tuple[Project, str],
) -> None:
    """sccache-dist itself, in the farm's image: a key that begins with '-' (1 in 64 do) signs
    the server's token, and a key it refuses is not printed in the failure."""
    project, _ = farm
    key = "-duBu_W9RVYljEI-_fx2a_P0HKhqD1PjDf0GqheSpPU"
    script = (
        "from torchkiln.inimage import farmnode; import sys\n"
        "print(farmnode.server_token(sys.argv[1], '172.17.0.9:10501').count('.'))\n"
        "farmnode.server_token(sys.argv[1] + '!!', '172.17.0.9:10501')\n"  # not base64url
    )
    image = project.env["FARM_IMAGE_NAME"]
    result = project.run(
        "docker", "run", "--rm", "--entrypoint", "python3", image, "-c", script, key, timeout=60
    )
    assert result.stdout.strip() == "2", result.stdout + result.stderr  # a JWT: 3 parts
    assert result.returncode != 0 and key not in result.stderr, result.stderr
    assert "could not sign this server's token" in result.stderr, result.stderr


def test_a_wrong_token_is_refused_in_one_line_before_any_compile(farm: tuple[Project, str]):
    project, _ = farm
    project = Project(project.root, project.name, {**project.env, "BUILD_FARM_TOKEN": "wrong"})
    started = time.monotonic()
    result = project.invoke("build", "--no-up", *add_units(project))
    said = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0
    assert said[-1].startswith("error: the build farm BUILD_FARM=http://"), said[-3:]
    assert "refuses BUILD_FARM_TOKEN (401)" in said[-1]
    assert "docker compose" not in "\n".join(said), "a build started"
    assert time.monotonic() - started < 60


def test_a_farm_stopped_during_the_compile_falls_back_and_says_so(
    farm: tuple[Project, str], tmp_path: Path
) -> None:
    """The wheels of the stand-in (no runtime image: the compile step is what this proves), the
    farm stopped as soon as the compile step says it starts."""
    project, _ = farm
    sources = add_units(project)
    command = [sys.executable, "-m", "invoke", "wheels", "--dest", str(tmp_path), *sources]
    lines: list[str] = []
    with subprocess.Popen(
        command,
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        watchdog = threading.Timer(1500, process.kill)  # the whole export's timeout
        watchdog.start()
        try:
            assert process.stdout is not None
            stopped = False
            for line in process.stdout:
                lines.append(line)
                if not stopped and "torchkiln-jobs: pytorch" in line:
                    stopped = True
                    project.run("docker", "compose", "--profile", "farm", "stop", "farm-worker",
                                "farm-server", "farm-scheduler")  # fmt: skip
            process.wait(timeout=1500)
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
    output = "".join(lines)
    assert process.returncode == 0 and stopped, output[-4000:]
    local, dist, errors, _ = counts(output)
    summary = next(line for line in output.splitlines() if line.startswith("sccache:"))
    print(f"\nstopped farm: {dist} remote, {local} local, {errors} fell back\n{summary}")
    assert errors > 0 and local > 0, summary
    assert f"WARNING {errors} compiles fell back to this machine" in summary, summary
    assert "could not communicate with scheduler" in summary, summary
    # Compiled here, the wheel holds what the farm's holds: the same files, the same device code.
    if FARM_WHEEL:
        (wheel,) = tmp_path.glob("torch-*.whl")
        here, there = wheel_contents(wheel, tmp_path), wheel_contents(FARM_WHEEL[0], tmp_path)
        assert sorted(here) == sorted(there)
        assert [name for name in here if here[name] != there[name]] == []

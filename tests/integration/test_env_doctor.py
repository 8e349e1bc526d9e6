"""invoke env and invoke doctor, run for real in a copy of the repository on the real engine."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchkiln import engine, envfile, hostfacts

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def host_gpu() -> tuple[bool, str]:
    """Whether this engine has an NVIDIA runtime, and the GPUs' CCA ('' without GPUs)."""
    return engine.nvidia_runtime_present()[0], hostfacts.gpu_compute_capabilities()


COPIED = ("tasks.py", "src", "compose", "docker", "env.example", "pyproject.toml")


@pytest.fixture
def checkout(repo: Path, tmp_path: Path) -> Path:
    """A throw-away copy of the repository, so the developer's own .env is never touched."""
    root = tmp_path / "torchkiln"
    root.mkdir()
    for name in COPIED:
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, root / name)
    return root


def invoke(root: Path, *args: str, env: dict[str, str] | None = None):
    """Run invoke in the copy the way a user does, with a timeout."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_refusal(result, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_env_writes_host_facts_and_cpu_override(checkout, docker_engine, host_gpu):
    nvidia, cca = host_gpu
    result = invoke(checkout, "env")
    assert result.returncode == 0, result.stderr
    values = envfile.read(checkout / ".env")
    assert values["UID"] == str(os.getuid())
    # the CPU override exactly when the engine has no NVIDIA runtime, and said so
    assert values["COMPOSE_FILE"].endswith("compose/cpu.yaml") is not nvidia
    assert ("compose/cpu.yaml" in result.stdout) is not nvidia
    assert values["COMPOSE_PROJECT_NAME"] == values["COMPOSE_PROJECT_NAME"].lower()
    assert values["CCA"] == cca  # detected; empty without GPUs, then the output says how to set it
    assert ("--cca" in result.stdout) is (cca == "")
    compose = subprocess.run(
        ["docker", "compose", "config", "--services"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if (checkout / "compose" / "compose.yaml").exists():
        # plain `docker compose` works from the root with no -f / -p, thanks to .env
        assert compose.returncode == 0, compose.stderr
        assert "train" in compose.stdout.split()


def test_env_leaves_existing_file_and_force_keeps_backup(checkout, docker_engine):
    assert invoke(checkout, "env", "--cca", "8.6").returncode == 0
    before = digest(checkout / ".env")
    again = invoke(checkout, "env", "--cca", "9.0")
    assert again.returncode == 0
    assert "untouched" in again.stdout
    assert digest(checkout / ".env") == before
    forced = invoke(checkout, "env", "--force", "--cca", "9.0")
    assert forced.returncode == 0, forced.stderr
    backups = sorted(checkout.glob(".env.*"))
    assert len(backups) == 1 and digest(backups[0]) == before
    assert envfile.read(checkout / ".env")["CCA"] == "9.0"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--cca", "86"], ["'86'", "8.6"]),
        (["--cca", "sm_86"], ["'sm_86'", "8.6"]),
        (["--cca", "8.6x"], ["'8.6x'", "8.6"]),
        (["--cca", "3.5"], ["'3.5'", "CUDA"]),
        (["--usr", "John Doe"], ["USR 'John Doe'", "lower-case"]),
        (["--uid", "abc"], ["UID 'abc'", "number"]),
    ],
    ids=["cca-86", "cca-sm_86", "cca-8.6x", "cca-3.5", "usr-spaces", "uid-text"],
)
def test_env_refuses_bad_input_and_keeps_env(checkout, docker_engine, args, words):
    (checkout / ".env").write_text("# mine\nUID=1000\n")
    before = digest(checkout / ".env")
    result = invoke(checkout, "env", "--force", *args)
    assert_one_line_refusal(result, *words)
    assert digest(checkout / ".env") == before
    assert not list(checkout.glob(".env.*"))


def test_env_for_root_and_for_another_user(checkout, docker_engine):
    root = invoke(checkout, "env", "--uid", "0", "--cca", "8.6")
    assert root.returncode == 0, root.stderr
    values = envfile.read(checkout / ".env")
    assert (values["UID"], values["USR"], values["GID"]) == ("0", "root", "0")
    other = invoke(checkout, "env", "--force", "--uid", "1234", "--gid", "1234", "--usr", "alice")
    assert other.returncode == 0, other.stderr
    values = envfile.read(checkout / ".env")
    assert (values["UID"], values["GID"], values["USR"]) == ("1234", "1234", "alice")
    from_environment = invoke(
        checkout, "env", "--force", "--uid", "1234", env={"USR": "bob", "CCA": "9.0a"}
    )
    values = envfile.read(checkout / ".env")
    assert from_environment.returncode == 0, from_environment.stderr
    assert (values["USR"], values["CCA"]) == ("bob", "9.0a")


def test_doctor_on_this_engine(checkout, docker_engine, host_gpu):
    result = invoke(checkout, "doctor")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line[:1].strip()}
    assert " ok " in rows["engine"] and " ok " in rows["compose"] and " ok " in rows["buildx"]
    assert ("ERROR" in rows["nvidia"]) is not host_gpu[0]  # an error only without a runtime
    assert "ERROR" in rows[".env"]  # no .env yet
    assert "run invoke env" in result.stdout


def test_doctor_with_cpu_env_only_warns_about_the_runtime(checkout, docker_engine, host_gpu):
    if host_gpu[0]:
        pytest.skip("this engine has the NVIDIA runtime: invoke env adds no CPU override")
    assert invoke(checkout, "env", "--cca", "8.6").returncode == 0
    result = invoke(checkout, "doctor")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line[:1].strip()}
    assert "WARN" in rows["nvidia"]
    assert " ok " in rows[".env"] and " ok " in rows["cca"]


def test_doctor_names_bad_env_line(checkout, docker_engine):
    (checkout / ".env").write_text("UID=1000\nnot a line\n")
    result = invoke(checkout, "doctor")
    assert result.returncode == 1
    assert ".env:2" in result.stdout
    assert "Traceback" not in result.stderr


def test_doctor_with_engine_unreachable(checkout, docker_engine):
    result = invoke(checkout, "doctor", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    engine_rows = [line for line in result.stdout.splitlines() if line.startswith("engine")]
    assert len(engine_rows) == 1 and "ERROR" in engine_rows[0]


# Each kind of .env line doctor cannot take, and the rows that judge by what it sets.
BROKEN_LINES = {
    "invalid-on-its-own": ("CCACHE_REMOTE=ftp://cache.example:1", {"compile cache"}),
    "dollar-compose-reads": (
        "PIP_INDEX_URL=https://me:pa$word@index.example/simple",
        {"tls", "index", "python"},
    ),
    "unparsable": ("not a line", set()),
    "bad-cca": ("CCA=86", {"cca", "base images"}),
    "two-settings-disagree": (
        "PIP_INDEX_URL=https://me:pw@index.example/simple\nPIP_INDEX_TOKEN=token",
        {"tls", "index", "python"},
    ),
}
ALWAYS_SHOWN = ("engine", "compose", "buildx", "nvidia runtime", "cuda", "driver", "cca")
ALWAYS_SHOWN += ("base images", "tls", "index", "python", "disk", ".env")


@pytest.mark.parametrize("name", list(BROKEN_LINES))
def test_doctor_with_a_broken_env_line_judges_every_row_it_still_can(
    checkout, docker_engine, host_gpu, name
):
    if host_gpu[0]:
        pytest.skip("this engine has the NVIDIA runtime: invoke env adds no CPU override")
    assert invoke(checkout, "env", "--cca", "8.6").returncode == 0
    env = checkout / ".env"
    text = env.read_text() + "BUILD_MODE=wheels\n"
    line, unchecked = BROKEN_LINES[name]
    number = len(text.splitlines()) + 1  # the first line it adds
    env.write_text(text + line + "\n")
    result = invoke(checkout, "doctor")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    # Each row by its check's name (the column before the status), "index (…)" as "index".
    rows = {
        row.split("  ")[0].split(" (")[0]: row
        for row in result.stdout.splitlines()
        if row[:1].strip()
    }
    for check in ALWAYS_SHOWN:
        assert check in rows, result.stdout
    assert "ERROR" in rows[".env"], result.stdout
    for check, row in rows.items():
        said = f"not checked: .env line {number} has an error"
        assert (said in row) is (check in unchecked), (check, result.stdout)
    # What .env says is judged, not the defaults: the CPU override and the wheels' disk.
    if "nvidia runtime" not in unchecked:
        assert "WARN" in rows["nvidia runtime"] and "cpu.yaml" in rows["nvidia runtime"]
    assert "source build" not in rows["disk"], result.stdout


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("PIP_INDEX_TOKEN=t0ken", True),
        ("CCACHE_REMOTE=redis://:pw@127.0.0.1:6379", True),
        ("PIP_INDEX_URL=https://index.example/simple", False),
    ],
    ids=["token", "url-password", "no-secret"],
)
def test_a_readable_env_with_a_secret_is_warned_by_doctor_and_made_private_by_build(
    checkout, docker_engine, line, secret
):
    assert invoke(checkout, "env", "--cca", "8.6").returncode == 0
    env = checkout / ".env"
    env.write_text(env.read_text() + line + "\n")
    env.chmod(0o644)
    doctor = invoke(checkout, "doctor")
    assert ("WARN" in doctor.stdout.split(".env secret", 1)[-1].split("\n")[0]) is secret
    assert (".env secret" in doctor.stdout) is secret, doctor.stdout
    built = invoke(checkout, "--dry", "build")  # refused later or not: .env was read first
    assert "Traceback" not in built.stdout + built.stderr
    assert (env.stat().st_mode & 0o777) == (0o600 if secret else 0o644)
    assert ("made it readable by you only" in built.stderr) is secret, built.stderr
    assert "t0ken" not in built.stdout + built.stderr + doctor.stdout


def test_doctor_python_row_says_what_is_known_of_an_image_that_is_not_here(checkout, docker_engine):
    assert invoke(checkout, "env", "--cca", "8.6").returncode == 0
    env = checkout / ".env"
    absent = "local/torchkiln-absent:13.0-devel-ubuntu24.04"
    base = os.environ.get("TORCHKILN_TEST_BASE_IMAGE") or "debian:bookworm"
    lines = f"BUILD_IMAGE={absent}\nTRAIN_IMAGE={base}\nPYTHON_VERSION=3.12\n"
    env.write_text(env.read_text() + lines)
    result = invoke(checkout, "doctor")
    rows = [row for row in result.stdout.splitlines() if row.startswith("python")]
    assert len(rows) == 2, result.stdout
    named = next(row for row in rows if absent in row)
    assert "from the image's name, Ubuntu 24.04 installs Python 3.12" in named, named
    assert "not checked, the image is not here" in named and " ok " in named, named
    here = next(row for row in rows if base in row)
    assert "has Python 3.11" in here and "not checked" not in here, here

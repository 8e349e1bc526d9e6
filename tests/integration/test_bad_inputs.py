"""SPEC's bad-input matrix, for real: each case gives one line naming the input and the fix,
exit != 0, no traceback, and changes nothing of the user's (.env, dist/ and the images are
hashed before and after). Absent components are produced for real where possible: the engine
stopped (a socket nobody serves), Compose v1 only (the v2 plugin hidden in a private mount
namespace, a v1 `docker-compose` first on PATH), no NVIDIA runtime (this machine's own lack);
an old driver through an `nvidia-smi` that reports one, and low disk through the docker SDK's
answer about the engine's root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from projects import EXEC_TIMEOUT, Project, make_project, remove_project

from torchkiln import doctor, engine, envfile, settings
from torchkiln.errors import UserError

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

CPU_COMPOSE = "compose/compose.yaml:compose/cpu.yaml"


@dataclass
class Case:
    """One bad input: the task and its arguments, how the project is spoiled, what is said."""

    args: list[str]
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)
    dotenv: dict[str, str] = field(default_factory=dict)
    extra_dotenv_line: str = ""
    wrap: str = ""  # "compose-v1" or "old-driver": run under a prepared PATH / namespace
    empty_dotenv: bool = False
    no_dotenv: bool = False
    hidden: list[str] = field(default_factory=list)  # never in any output (passwords)


SECRET = "s3cr3t-pw"


CASES = {
    "cca-86": Case(["build", "--cca", "86"], ["CCA '86'", "8.6"]),
    "cca-sm_86": Case(["build", "--cca", "sm_86"], ["CCA 'sm_86'", "8.6"]),
    "cca-8.6x": Case(["build", "--cca", "8.6x"], ["CCA '8.6x'", "8.6"]),
    "cca-empty-no-gpu": Case(["build"], ["CCA is empty", "--cca"], env={"CCA": ""}),
    "cca-3.5-cuda13": Case(["build", "--cca", "3.5"], ["CCA '3.5'", "CUDA 13", "CUDA_VERSION"]),
    "env-cca-86": Case(["env", "--force", "--cca", "86"], ["CCA '86'", "8.6"]),
    "torch-without-vision": Case(["build", "--torch", "2.15.0"], ["torch 2.15.0", "torchvision"]),
    "forced-vision-mismatch": Case(
        ["build", "--torch", "2.14.1"],
        ["TORCHVISION_VERSION '0.28.0'", "torchvision 0.29"],
        env={"TORCHVISION_VERSION": "0.28.0"},
    ),
    "env-line-unparsable": Case(
        ["build"], [".env:", "not a setting", "NAME=value"], extra_dotenv_line="not a setting"
    ),
    "usr-capitals-spaces": Case(
        ["build"], ["USR 'John Doe'", "lower-case"], {}, {"USR": "John Doe"}
    ),
    "env-usr-capitals": Case(["env", "--force", "--usr", "Alice"], ["USR 'Alice'", "lower-case"]),
    "project-name-capitals": Case(
        ["build"],
        ["COMPOSE_PROJECT_NAME 'MyProject'", "lower-case"],
        {},
        {"COMPOSE_PROJECT_NAME": "MyProject"},
    ),
    "engine-down": Case(
        ["build"],
        ["engine", "unreachable", "DOCKER_HOST"],
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    ),
    "compose-v1-only": Case(
        ["build"], ["Compose v1", "1.29.2", "docker-compose-plugin"], wrap="compose-v1"
    ),
    "no-nvidia-runtime": Case(
        ["build"],
        ["nvidia runtime", "NVIDIA Container Toolkit"],
        dotenv={"COMPOSE_FILE": "compose/compose.yaml"},
    ),
    "old-driver": Case(["build"], ["driver 550.54.15", "580.65.06"], wrap="old-driver"),
    "wheels-dest-not-empty": Case(["wheels", "--dest", "dist"], ["dist", "--force"]),
    "unknown-service": Case(["build", "--service", "gpu"], ["gpu", "train"]),
    # The container user must never break the image build late.
    "uid-out-of-range": Case(
        ["build"], ["UID '4294967296'", "0 to 4294967294"], {}, {"UID": "4294967296"}
    ),
    "uid-system-account": Case(["build"], ["UID '33'", "system account"], {}, {"UID": "33"}),
    "usr-system-account": Case(
        ["build"], ["USR 'daemon'", "system account"], {}, {"USR": "daemon"}
    ),
    "env-root-drops-usr": Case(
        ["env", "--force", "--uid", "0", "--usr", "alice"], ["--usr alice", "UID 0"]
    ),
    # Diagnoses match causes.
    "docker-context-missing": Case(
        ["build"],
        ["Docker context 'nowhere'", "docker context ls"],
        env={"DOCKER_CONTEXT": "nowhere"},
    ),
    "base-image-unreachable": Case(
        ["build"],
        ["base image localhost:1/none/cuda:1 (BUILD_IMAGE)", "cannot be pulled", "CUDA_FROM=pypi"],
        dotenv={"BUILD_IMAGE": "localhost:1/none/cuda:1"},
    ),
    "source-not-pytorch": Case(
        ["build", "--source", "pytorch=not-pytorch"], ["holds no torch/__init__.py", "pytorch"]
    ),
    "cca-family-for-extensions": Case(
        ["build", "--cca", "10.0f"], ["CCA '10.0f'", "cpp_extension", "10.0"]
    ),
    "pypi-cuda-12": Case(
        ["build", "--service", "full"],
        ["CUDA_FROM=pypi needs CUDA 13", "12.8.1"],
        dotenv={"CUDA_FROM": "pypi", "CUDA_VERSION": "12.8.1"},
    ),
    "wheels-force-over-a-users-wheel": Case(
        ["wheels", "--dest", "dist", "--force"], ["no intact earlier export", "mine-1.0"]
    ),
    "env-empty": Case(["build"], [".env sets nothing", "invoke env --force"], empty_dotenv=True),
    # What a user types never reaches a traceback, and no message shows a password.
    "ccache-remote-port": Case(
        ["build"],
        ["CCACHE_REMOTE 'redis://****@cache:6379x'", "port '6379x'", "HOST:6379"],
        dotenv={"CCACHE_REMOTE": f"redis://:{SECRET}@cache:6379x"},
        hidden=[SECRET],
    ),
    "ccache-remote-misspelt-attribute": Case(
        ["build"],
        ["'|readonly'", "did you mean read-only?"],
        dotenv={"CCACHE_REMOTE": "redis://cache:6379|readonly"},
    ),
    "ccache-remote-bad-timeout": Case(
        ["build"],
        ["connect-timeout=soon"],
        dotenv={"CCACHE_REMOTE": "redis://cache:6379|connect-timeout=soon"},
    ),
    "ccache-remote-no-host": Case(
        ["wheels"],
        ["CCACHE_REMOTE", "names no host"],
        env={"CCACHE_REMOTE": f"redis://:{SECRET}/#@"},
        hidden=[SECRET],
    ),
    "torch-index-password": Case(
        ["build"],
        ["TORCH_INDEX_URL 'https://me:****@mirror.example/whl/cu130'", "PIP_INDEX_URL"],
        dotenv={"TORCH_INDEX_URL": f"https://me:{SECRET}@mirror.example/whl/cu130"},
        hidden=[SECRET],
    ),
    "apt-mirror-password": Case(
        ["build"],
        ["APT_MIRROR", "needs no password"],
        dotenv={"APT_MIRROR": f"https://me:{SECRET}@mirror.example/debian"},
        hidden=[SECRET],
    ),
    "index-password-and-token": Case(
        ["build"],
        ["PIP_INDEX_URL", "PIP_INDEX_TOKEN", "keep one"],
        env={"PIP_INDEX_TOKEN": "t0ken"},
        dotenv={"PIP_INDEX_URL": f"https://me:{SECRET}@pypi.example/simple"},
        hidden=[SECRET],
    ),
    "dotenv-dollar-compose-would-expand": Case(
        ["build"],
        [".env:", "'$'", "single quotes"],
        extra_dotenv_line=f"CCACHE_REMOTE=redis://:pa$word-{SECRET}@cache:6379",
        hidden=[SECRET],
    ),
    # Another project's shell: named with the fix, never "docker compose build failed".
    "compose-file-of-another-project": Case(
        ["build"],
        ["COMPOSE_FILE=/srv/webapp/docker-compose.yml", "unset COMPOSE_FILE"],
        env={"COMPOSE_FILE": "/srv/webapp/docker-compose.yml"},
    ),
    "compose-project-of-another-project": Case(
        ["down"],
        ["COMPOSE_PROJECT_NAME=webapp", "unset COMPOSE_PROJECT_NAME"],
        env={"COMPOSE_PROJECT_NAME": "webapp"},
    ),
    "compose-project-of-another-project-build": Case(
        ["build"], ["COMPOSE_PROJECT_NAME=webapp"], env={"COMPOSE_PROJECT_NAME": "webapp"}
    ),
    "compose-env-files-of-another-project": Case(
        ["up"],
        ["COMPOSE_ENV_FILES=/srv/webapp/.env", "unset"],
        env={"COMPOSE_ENV_FILES": "/srv/webapp/.env"},
    ),
    "compose-path-separator": Case(
        ["build"], ["COMPOSE_PATH_SEPARATOR=;"], env={"COMPOSE_PATH_SEPARATOR": ";"}
    ),
    "default-platform-of-another-machine": Case(
        ["build"],
        ["DOCKER_DEFAULT_PLATFORM=linux/s390x", "unset DOCKER_DEFAULT_PLATFORM"],
        env={"DOCKER_DEFAULT_PLATFORM": "linux/s390x"},
    ),
    "buildkit-off": Case(
        ["wheels"], ["DOCKER_BUILDKIT=0", "BuildKit"], env={"DOCKER_BUILDKIT": "0"}
    ),
    "down-without-env": Case(["down"], [".env does not exist", "invoke env"], no_dotenv=True),
    "up-without-env": Case(["up"], [".env does not exist", "invoke env"], no_dotenv=True),
    "clean-without-env": Case(["clean"], [".env does not exist", "invoke env"], no_dotenv=True),
    # The build cache is every checkout's: removing it needs saying so.
    "clean-cache-alone": Case(
        ["clean", "--cache"],
        ["--cache", "shared by every torchkiln checkout", "--all-checkouts"],
    ),
    # Paths: taken as they are, or refused in one line naming them.
    "dest-with-a-line-break": Case(["wheels", "--dest", "a\nb"], ["--dest", "line break"]),
    "source-with-a-line-break": Case(
        ["build", "--source", "pytorch=a\nb"], ["--source", "line break"]
    ),
    "dest-below-a-file": Case(
        ["wheels", "--dest", "README.md/dist"], ["--dest", "README.md", "cannot write into"]
    ),
    "ca-bundle-with-commas-missing": Case(
        ["build", "--ca-bundle", "no,such 'bundle'.pem"], ["CA bundle 'no,such 'bundle'.pem'"]
    ),
}


def digest_tree(path: Path) -> str:
    """Hash a file, or every file below a folder with its relative name."""
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for item in files:
        sha.update(str(item.relative_to(path.parent)).encode())
        sha.update(item.read_bytes())
    return sha.hexdigest()


def image_ids() -> list[str]:
    listed = subprocess.run(
        [
            "docker",
            "image",
            "ls",
            "--all",
            "--no-trunc",
            "--format",
            "{{.Repository}}:{{.Tag}}@{{.ID}}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sorted(listed.stdout.split())


def snapshot(project: Project) -> tuple[str, str, list[str], list[str]]:
    """What of the user's must not change: .env, dist/, the images, the .env backups."""
    backups = sorted(p.name for p in project.root.glob(".env.*"))
    return (
        digest_tree(project.root / ".env"),
        digest_tree(project.root / "dist"),
        image_ids(),
        backups,
    )


def plugin_dir() -> Path:
    """Find the folder the docker CLI loads the Compose v2 plugin from."""
    out = subprocess.run(
        ["docker", "info", "--format", "{{range .ClientInfo.Plugins}}{{.Path}}\n{{end}}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for line in out.splitlines():
        if line.strip().endswith("docker-compose"):
            return Path(line.strip()).parent
    pytest.fail(f"no Compose v2 plugin found among the CLI plugins: {out!r}")


def write_tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def wrapped(case: Case, project: Project, scratch: Path, command: list[str]) -> list[str]:
    """Prepare the absent component a case needs; return the command to run under it."""
    tools = scratch / "bin"
    tools.mkdir(exist_ok=True)
    if case.wrap == "old-driver":
        write_tool(
            tools,
            "nvidia-smi",
            'case "$*" in *driver_version*) echo 550.54.15;; '
            "*compute_cap*) echo 8.6;; *) echo 'NVIDIA-SMI 550.54.15';; esac",
        )
        project.env["PATH"] = f"{tools}:{project.env['PATH']}"
        return command
    if case.wrap == "compose-v1":
        if os.geteuid() != 0 or not shutil.which("unshare"):
            pytest.skip("hiding the Compose v2 plugin needs root and unshare")
        plugins = scratch / "plugins"
        plugins.mkdir()
        for plugin in plugin_dir().iterdir():
            if plugin.name != "docker-compose":
                (plugins / plugin.name).symlink_to(plugin)
        write_tool(
            tools,
            "docker-compose",
            'case "$*" in *--short*) echo 1.29.2;; '
            "*) echo 'docker-compose version 1.29.2, build 5becea4c';; esac",
        )
        project.env["PATH"] = f"{tools}:{project.env['PATH']}"
        hide = f'mount --bind {plugins} {plugin_dir()} && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh", *command]
    return command


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    """A project copy with a valid .env (CPU override, CCA 8.6) and a non-empty dist/."""
    made = make_project(
        tmp_path_factory.mktemp("bad"),
        "bad",
        CCA="8.6",
        COMPOSE_FILE=CPU_COMPOSE,
        CUDA_FROM="image",
    )
    (made.root / "not-pytorch").mkdir()
    (made.root / "not-pytorch" / "setup.py").write_text("# some other project\n")
    (made.root / "dist").mkdir()
    (made.root / "dist" / "mine-1.0-py3-none-any.whl").write_bytes(b"the user's wheel")
    good_env = (made.root / ".env").read_text()
    yield made, good_env
    remove_project(made)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(project, tmp_path: Path, name: str) -> None:
    made, good_env = project
    case = CASES[name]
    if name == "no-nvidia-runtime" and engine.nvidia_runtime_present()[0]:
        pytest.skip("this engine has the NVIDIA runtime, so that refusal cannot happen here")
    env_path = made.root / ".env"
    text = good_env
    for key, value in case.dotenv.items():
        text += f"{key}={envfile.quote(value)}\n"
    if case.extra_dotenv_line:
        text += case.extra_dotenv_line + "\n"
    env_path.write_text("" if case.empty_dotenv else text)
    if case.no_dotenv:
        env_path.unlink()
    saved_environ = dict(made.env)
    try:
        made.env.update(case.env)
        before = snapshot(made)
        command = wrapped(case, made, tmp_path, [sys.executable, "-m", "invoke", *case.args])
        result = made.run(*command, timeout=EXEC_TIMEOUT)
        after = snapshot(made)
    finally:
        made.env.clear()
        made.env.update(saved_environ)
        env_path.write_text(good_env)  # the next case (and the clean-up) starts from a good .env
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    said = [line for line in result.stderr.splitlines() if line.strip()]
    if said[0].startswith("error: the build cannot start here, for "):
        # Several true reasons (Compose v1 alone comes without buildx): said at once, each on
        # a line of its own under the one that says so.
        assert len(said) == 1 + int(said[0].split("for ", 1)[1].split()[0]), output
        said = [" ".join(said)]
    assert len(said) == 1, output
    for word in case.words:
        assert word in said[0], said[0]
    assert "#0 building" not in output and "Building" not in output  # refused before building
    assert before == after, "the user's .env, dist/ or images changed"
    for secret in case.hidden:
        assert secret not in output, "a password was printed"


def test_low_disk_is_refused_before_a_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's root with 5 GB free, as the docker SDK and statvfs would report it."""
    monkeypatch.setattr(engine, "_free_bytes", lambda root: 5 * doctor.GB)
    values = settings.resolve({"CCA": "8.6", "COMPOSE_FILE": CPU_COMPOSE})
    with pytest.raises(UserError) as caught:
        doctor.require_ready(values, up=True)
    message = str(caught.value)
    assert message.startswith("disk: 5 GB free")
    assert "invoke clean" in message and "\n" not in message


ABSENT_IMAGE = "local/torchkiln-absent:none"
# A user's own floor far above any disk: the disk check refuses on any engine, for real.
NO_DISK = {"MIN_FREE_DISK_GB": "99999"}
MULTI_CASES = {
    "image-and-disk": (
        {"BUILD_IMAGE": ABSENT_IMAGE, "TRAIN_IMAGE": ABSENT_IMAGE, **NO_DISK},
        {},
        ["base images", "disk"],
    ),
    "tls-image-disk": (
        {"BUILD_IMAGE": ABSENT_IMAGE, "TRAIN_IMAGE": ABSENT_IMAGE, **NO_DISK, "CA_BUNDLE": ""},
        {},
        ["base images", "tls", "disk"],
    ),
    "engine-and-tls": (
        {"CA_BUNDLE": ""},
        {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
        [
            "engine",
            "tls",
        ],
    ),
}


def unrelated_ca(folder: Path) -> Path:
    """A CA of our own that signs no index: as a TLS-inspecting proxy's bundle given wrongly."""
    key, pem = folder / "ca.key", folder / "ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=torchkiln test CA", "-keyout", str(key), "-out", str(pem)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return pem


@pytest.mark.parametrize("name", list(MULTI_CASES))
def test_every_preflight_reason_is_said_at_once_most_fundamental_first(
    project, tmp_path: Path, name: str
) -> None:
    made, good_env = project
    dotenv, environ, expected = MULTI_CASES[name]
    if "CA_BUNDLE" in dotenv:
        dotenv = {**dotenv, "CA_BUNDLE": str(unrelated_ca(tmp_path))}
    env_path = made.root / ".env"
    env_path.write_text(good_env + "".join(f"{k}={envfile.quote(v)}\n" for k, v in dotenv.items()))
    saved_environ = dict(made.env)
    before = (digest_tree(env_path), digest_tree(made.root / "dist"))
    try:
        made.env.update(environ)
        result = made.invoke("build")
    finally:
        made.env.clear()
        made.env.update(saved_environ)
        after = (digest_tree(env_path), digest_tree(made.root / "dist"))
        env_path.write_text(good_env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert "#0 building" not in output, "refused before building"
    assert before == after, "the user's .env or dist/ changed"
    said = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.strip()]
    assert said[0].startswith(f"the build cannot start here, for {len(expected)} reasons"), output
    named = [line.split(". ", 1)[1].split(":", 1)[0] for line in said[1:]]
    assert named == expected, output
    for line in said[1:]:
        assert "; fix: " in line, line
    disk = next((line for line in said if ". disk:" in line), "")
    if disk:  # the shared cache is never the first fix, and is called what it is
        fix = disk.split("; fix: ", 1)[1]
        assert "MIN_FREE_DISK_GB" in fix.split("; or ")[0], fix
        # Offered only while the engine's build cache holds something (not on a fresh engine,
        # nor after the suite emptied it).
        if "--all-checkouts" in fix:
            assert fix.index("MIN_FREE_DISK_GB") < fix.index("last resort: invoke clean"), fix


def default_index() -> str:
    from torchkiln import hostfacts

    return hostfacts.default_index_url()


# BUILD_MODE=wheels on the CPU downloads torch, torchvision, torchaudio from the torch index.
WHEELS_ON_CPU = {"BUILD_MODE": "wheels", "CUDA_FROM": "none"}
INDEX_CASES = {
    # The newcomer's case: the torch index's name does not resolve (.invalid never does).
    "torch-index-does-not-resolve": (
        {**WHEELS_ON_CPU, "TORCH_INDEX_URL": "https://torch-index.invalid/whl/cpu"},
        ["does not resolve", "torch-index.invalid"],
        True,
    ),
    # The index answers, but has no torch wheel for this Python: no working value to offer
    # from the same index, so the fix names the setting and a wheelhouse.
    "no-wheel-for-this-python": (
        {**WHEELS_ON_CPU, "TORCH_INDEX_URL": "DEFAULT", "PYTHON_VERSION": "3.7"},
        ["has no wheel of torch==", "Python 3.7"],
        False,
    ),
    # CUDA_FROM=pypi takes torch from the Python index itself: the setting named is that one.
    "python-index-does-not-resolve": (
        {
            "BUILD_MODE": "wheels",
            "CUDA_FROM": "pypi",
            "PIP_INDEX_URL": "https://pip.invalid/simple",
        },
        ["PIP_INDEX_URL", "does not resolve"],
        False,
    ),
}


@pytest.mark.parametrize("name", list(INDEX_CASES))
def test_an_index_the_build_needs_is_probed_in_the_preflight(project, name: str) -> None:
    made, good_env = project
    dotenv, words, working_value = INDEX_CASES[name]
    index = default_index()
    dotenv = {key: index if value == "DEFAULT" else value for key, value in dotenv.items()}
    env_path = made.root / ".env"
    env_path.write_text(good_env + "".join(f"{k}={envfile.quote(v)}\n" for k, v in dotenv.items()))
    try:
        result = made.invoke("--dry", "build")
    finally:
        env_path.write_text(good_env)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    said = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.strip()]
    refusal = next(line for line in said if line.lstrip("0123456789. ").startswith("index ("))
    setting = "PIP_INDEX_URL" if dotenv.get("CUDA_FROM") == "pypi" else "TORCH_INDEX_URL"
    assert f"index ({setting})" in refusal, output
    for word in words:
        assert word in refusal, refusal
    if working_value:  # a value that works here, checked against the index it names
        assert f"TORCH_INDEX_URL={index}" in refusal and "GB wheel" in refusal, refusal
    else:
        assert "--wheelhouse" in refusal, refusal


def test_a_torch_index_that_has_the_wheels_passes_the_preflight(project) -> None:
    made, good_env = project
    dotenv = {**WHEELS_ON_CPU, "TORCH_INDEX_URL": default_index()}
    env_path = made.root / ".env"
    env_path.write_text(good_env + "".join(f"{k}={envfile.quote(v)}\n" for k, v in dotenv.items()))
    try:
        result = made.invoke("--dry", "build", "--no-up")
    finally:
        env_path.write_text(good_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "index (" not in result.stderr


CXX17_SETUP = """from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

setup(
    name="cxx17-ops",
    ext_modules=[
        CUDAExtension(
            "cxx17_ops",
            ["ops.cu"],
            extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
"""


@pytest.mark.parametrize(
    "given",
    ["folder", "mamba-ssm==2.3.2.post1"],  # a folder of one's own; a real sdist on the index
)
def test_a_cxx17_extension_against_a_cxx20_torch_is_refused_before_the_compile(
    project, tmp_path: Path, given: str
) -> None:
    from torchkiln import cxxcheck, indexcheck

    made, _ = project
    if given == "folder":
        (tmp_path / "ops").mkdir()
        (tmp_path / "ops" / "setup.py").write_text(CXX17_SETUP)
        given = str(tmp_path / "ops")
    result = made.invoke("--dry", "build", "--no-up", "--extension", given)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    assert "docker compose" not in result.stdout.split("# .torchkiln/")[0]
    said = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.strip()]
    refusal = next(line for line in said if f"--extension {given}: " in line)
    assert "compiles with -std=c++17, and torch 2.14.1's headers require C++20" in refusal
    # The torch that fits is named, and it is one the index has.
    fitting = refusal.split("build with --torch ", 1)[1].split(",", 1)[0]
    assert cxxcheck.torch_standard(fitting) == 17, refusal
    index = default_index()
    listed = indexcheck.probe(index, CA_BUNDLE_HOST, "3.11", ["torch"]).versions["torch"]
    assert indexcheck.has_version(listed, fitting), (fitting, sorted(listed))
    if given.startswith("/"):  # and with that torch the same extension passes the check
        again = made.invoke("--dry", "build", "--no-up", "--extension", given, "--torch", fitting)
        assert f"--extension {given}: " not in again.stdout + again.stderr, again.stderr
        assert again.returncode == 0, again.stdout + again.stderr


CA_BUNDLE_HOST = "/etc/ssl/certs/ca-certificates.crt"

"""Security checks on the real engine: build secrets leave no trace in the image, the container
user is not root and has no sudo unless asked, and Compose shares no host namespace.

The build uses both secrets with unique random contents: a CA bundle (the host's, plus a comment
line holding a marker) and an index token for PIP_INDEX_URL=pip's default index (PyPI
ignores the credential). A unique requirements change makes the pip step that reads both
secrets run even when BuildKit's cache holds everything else.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from pip._internal.models.index import PyPI
from projects import (
    CA_BUNDLE,
    EXEC_TIMEOUT,
    Project,
    assert_ok,
    clean_environ,
    fixture_sources,
    make_project,
    remove_project,
)

from torchkiln import envfile

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

# pip's own default index, so the token test downloads through a real index.
INDEX_URL = PyPI.simple_url
CHUNK = 1 << 20


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    """A train image built with a marked CA bundle and an index token, and its container."""
    tmp = tmp_path_factory.mktemp("security")
    marker = f"torchkiln-ca-marker-{uuid.uuid4().hex}"
    token = f"tk-{secrets.token_hex(16)}"
    bundle = tmp / "ca-bundle.pem"
    bundle.write_text(f"{Path(CA_BUNDLE).read_text()}\n# {marker}\n", encoding="utf-8")
    project = make_project(tmp, "security", CA_BUNDLE=str(bundle), PIP_INDEX_URL=INDEX_URL)
    project.env["PIP_INDEX_TOKEN"] = token
    requirements = project.root / "docker" / "requirements.txt"
    requirements.write_text(f"{requirements.read_text()}# secrets check {uuid.uuid4().hex}\n")
    try:
        started = time.monotonic()
        output = assert_ok(project.invoke("build", "--cca", "8.6 9.0", *fixture_sources(project)))
        print(f"\nbuild with a CA bundle and an index token: {time.monotonic() - started:.0f} s")
        yield project, output, marker, token
    finally:
        remove_project(project)


def secret_hits(text: str, *needles: str) -> list[str]:
    return [needle for needle in needles if needle in text]


def test_both_secrets_were_used_and_the_log_shows_neither(secured) -> None:
    _, output, marker, token = secured
    # pip authenticated with the token (and printed it masked) in a step that ran this time.
    assert "authenticates to PIP_INDEX_URL as __token__" in output
    masked = INDEX_URL.replace("://", "://__token__:****@", 1)
    assert f"Looking in indexes: {masked}" in output
    assert secret_hits(output, marker, token) == []


def test_no_secret_in_history_or_inspect(secured) -> None:
    project, _, marker, token = secured
    image = project.image("train")
    history = assert_ok(project.run("docker", "history", "--no-trunc", image, timeout=60))
    assert "setup-user.sh" in history  # the search reads full commands
    container = assert_ok(project.run("docker", "compose", "ps", "--quiet", "train")).strip()
    assert container
    inspected = assert_ok(project.run("docker", "inspect", image, container, timeout=60))
    assert "io.torchkiln.cca" in inspected
    assert secret_hits(history, marker, token) == []
    assert secret_hits(inspected, marker, token) == []


def test_no_secret_in_any_file_of_the_image(secured, tmp_path: Path) -> None:
    project, _, marker, token = secured
    created = assert_ok(project.run("docker", "create", project.image("train"), timeout=60))
    container = created.strip().splitlines()[-1]
    archive = tmp_path / "filesystem.tar"
    try:
        assert_ok(project.run("docker", "export", "--output", str(archive), container, timeout=600))
    finally:
        project.run("docker", "rm", "--force", container, timeout=60)
    needles = [marker.encode(), token.encode(), b"alice:x:1234:1234"]
    found = search_file(archive, needles)
    print(f"\nexported filesystem: {archive.stat().st_size / 1e6:.0f} MB searched")
    archive.unlink()
    assert b"alice:x:1234:1234" in found  # the search reads file contents (/etc/passwd)
    assert [needle for needle in found if needle != b"alice:x:1234:1234"] == []
    # The compile saw the index URL without the token (pytorch fixture's recorded environment).
    script = "python -c 'import torch; print(torch.build_env[\"PIP_INDEX_URL\"])'"
    assert assert_ok(project.exec("train", script)).strip() == INDEX_URL


def search_file(path: Path, needles: list[bytes]) -> set[bytes]:
    """Return the needles that occur in a file, reading it in chunks that overlap."""
    found: set[bytes] = set()
    overlap = max(len(needle) for needle in needles) - 1
    tail = b""
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            window = tail + chunk
            found.update(needle for needle in needles if needle in window)
            tail = window[-overlap:]
    return found


def test_user_is_not_root_and_has_no_sudo(secured) -> None:
    project, _, _, _ = secured
    result = project.exec("train", "id -u; sudo -n true 2>/dev/null && echo has-sudo || echo no")
    assert assert_ok(result).split() == ["1234", "no"]
    inspected = assert_ok(
        project.run(
            "docker",
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}",
            project.image("train"),
            timeout=60,
        )
    )
    assert inspected.strip() == "1234:1234"


def test_passwordless_sudo_only_when_asked(secured) -> None:
    """PASSWORDLESS_SUDO=1 (same cache, another tag) gives the user sudo without a password."""
    project, _, _, _ = secured
    image = f"torchkiln-test/{project.name}-sudo:latest"
    asked = Project(
        project.root,
        project.name,
        {**project.env, "PASSWORDLESS_SUDO": "1", "TRAIN_IMAGE_NAME": image},
    )
    try:
        assert_ok(asked.invoke("build", "--no-up", "--cca", "8.6 9.0", *fixture_sources(asked)))
        script = "id -u; sudo -n true && echo has-sudo"
        result = asked.run(
            "docker", "run", "--rm", image, "zsh", "-c", script, timeout=EXEC_TIMEOUT
        )
        assert assert_ok(result).split() == ["1234", "has-sudo"]
    finally:
        project.run("docker", "image", "rm", "--force", image, timeout=120)


@pytest.mark.parametrize(
    "files",
    [["compose/compose.yaml"], ["compose/compose.yaml", "compose/cpu.yaml"]],
    ids=["gpu", "cpu"],
)
def test_compose_shares_no_host_namespace(repo: Path, tmp_path: Path, files: list[str]) -> None:
    """No host network, IPC or PID namespace, no privileged mode; /dev/shm is SHM_SIZE."""
    env_file = tmp_path / "minimal.env"
    env_file.write_text("UID=1234\nGID=1234\n", encoding="utf-8")
    file_args = [arg for name in files for arg in ("-f", name)]
    command = ["docker", "compose", "--env-file", str(env_file), *file_args]
    result = subprocess.run(
        [*command, "config", "--format", "json"],
        cwd=repo,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    config = json.loads(assert_ok(result))
    assert set(config["services"]) == {"train", "full", "ngc"}
    for name, service in config["services"].items():
        assert service.get("network_mode") in (None, "bridge"), name
        assert service["build"].get("network") in (None, "default"), name
        assert service.get("ipc") in (None, "private", "shareable"), name
        assert service.get("pid") is None, name
        assert not service.get("privileged"), name
        # the trade-off the README explains: a bounded /dev/shm instead of ipc: host
        assert service["shm_size"] == str(16 * 1024**3), name
        # ngc compiles nothing, so only the services that compile get the cache's URL and farm
        compiles = {"compile_cache", "build_farm", "build_farm_token"}
        compiles = compiles if name in ("train", "full") else set()
        assert {secret["source"] for secret in service["build"]["secrets"]} == {
            "ca_bundle",
            "pip_index_token",
            *compiles,
        }
    for secret, variable in (
        ("pip_index_token", "PIP_INDEX_TOKEN"),
        ("compile_cache", "COMPILE_CACHE"),
        ("build_farm", "BUILD_FARM"),
        ("build_farm_token", "BUILD_FARM_TOKEN"),
    ):
        # read from the process environment at build time, never from a file in the context
        assert config["secrets"][secret] == {
            "name": config["secrets"][secret]["name"],
            "environment": variable,
        }


def test_the_farm_servers_have_only_what_bubblewrap_needs(repo: Path, tmp_path: Path) -> None:
    """The build farm (profile farm): never privileged nor on the host network; the servers
    get SYS_ADMIN and the three security options docs/farm.md explains, the scheduler none."""
    env_file = tmp_path / "minimal.env"
    env_file.write_text("UID=1234\nGID=1234\n", encoding="utf-8")
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), "-f", "compose/compose.yaml",
         "--profile", "farm", "config", "--format", "json"],
        cwd=repo, env=clean_environ(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    services = json.loads(assert_ok(result))["services"]
    wanted = ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"]
    for name in ("farm-scheduler", "farm-server", "farm-worker"):
        service = services[name]
        assert not service.get("privileged") and service.get("network_mode") != "host", name
        server = name != "farm-scheduler"
        assert service.get("cap_add", []) == (["SYS_ADMIN"] if server else []), name
        assert sorted(service.get("security_opt", [])) == (sorted(wanted) if server else []), name
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert mount["read_only"] and mount["target"].startswith("/run/secrets/"), name


def test_invoke_env_keeps_the_token_out_of_env(tmp_path: Path) -> None:
    project = make_project(tmp_path, "envtoken")
    token = f"tk-{secrets.token_hex(16)}"
    try:
        env = {**project.env, "PIP_INDEX_TOKEN": token}
        result = Project(project.root, project.name, env).invoke("env", "--force", "--cca", "8.6")
        assert_ok(result)
        text = (project.root / ".env").read_text()
        assert token not in text
        assert not envfile.holds_secret(text)
        assert (project.root / ".env").stat().st_mode & 0o777 == 0o644
    finally:
        remove_project(project)

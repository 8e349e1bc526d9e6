"""Passwords with every character that ever broke something, for real: a Redis compile cache
whose password holds `/ # $ space " ' @ : | %`, given raw in the environment, and a password in
PIP_INDEX_URL (split off automatically into the index token secret). The compile really reaches
the cache (Redis gains keys, sccache counts no remote error), pip really authenticates, and the
password shows up nowhere: not in the output, `docker history --no-trunc`, `docker inspect`,
`.torchkiln/`, or any message of doctor and `invoke env --force`; the files that hold it stay
mode 0600.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
from engines import redis_command, redis_server
from pip._internal.models.index import PyPI
from projects import Project, assert_ok, fixture_sources, make_project, remove_project

from torchkiln import envfile

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

MARK = uuid.uuid4().hex[:10]
# Compose's $, ccache's $VAR (the old CCACHE_REMOTE form), a URL's / # @ ? : and its attribute
# separator |, spaces, quotes.
CACHE_PASSWORD = f"p/w#x$HOME y\"q'u@:|%-{MARK}"
INDEX_PASSWORD = f"i/p#$PATH 'w'@:{MARK}x"
CCACHE_LINE = re.compile(r"torchkiln-sccache: pytorch hits=(\d+) misses=(\d+) remote_hits=(\d+) "
                         r"remote_errors=(\d+)")  # fmt: skip


def keys(address: str, port: int) -> int:
    """DBSIZE, authenticated on the same connection."""
    answer = redis_command(address, port, ("AUTH", CACHE_PASSWORD), ("DBSIZE",))
    assert not answer.startswith("-"), answer
    return int(answer.strip().lstrip(":"))


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Redis with that password on the docker0 bridge's address (where build steps reach it)."""
    with redis_server(tmp_path_factory.mktemp("redis"), "--requirepass", CACHE_PASSWORD) as server:
        yield server


def hidden_everywhere(text: str) -> list[str]:
    """The forms of either password found in text (raw, percent-encoded, the marker)."""
    forms = [CACHE_PASSWORD, INDEX_PASSWORD, MARK]
    forms += [
        urllib.parse.quote(password, safe="") for password in (CACHE_PASSWORD, INDEX_PASSWORD)
    ]
    return [form for form in forms if form in text]


@pytest.fixture(scope="module")
def secured(redis, tmp_path_factory: pytest.TempPathFactory):
    """A fixture build with both passwords, typed raw: CCACHE_REMOTE in the environment, the
    index URL in .env (as invoke env --force would keep it), a compile and a pip step that run."""
    address, port = redis
    tmp = tmp_path_factory.mktemp("secrets")
    index = PyPI.simple_url.replace("://", f"://builder:{urllib.parse.quote(INDEX_PASSWORD)}@", 1)
    project = make_project(tmp, "secretvalues", PIP_INDEX_URL=index)
    (project.root / ".env").chmod(0o600)
    project.env["CCACHE_REMOTE"] = f"redis://:{CACHE_PASSWORD}@{address}:{port}"
    requirements = project.root / "docker" / "requirements.txt"
    requirements.write_text(f"{requirements.read_text()}# secrets check {uuid.uuid4().hex}\n")
    cpu = project.root / "tests" / "fixtures" / "pytorch" / "csrc" / "cpu" / "cpu.cpp"
    cpu.write_text(cpu.read_text() + f"\nstatic const long unique_{uuid.uuid4().hex} = 1;\n")
    before = keys(address, port)
    try:
        output = assert_ok(project.invoke("build", *fixture_sources(project)))
        yield project, output, before
    finally:
        remove_project(project)


def test_the_compile_reached_the_cache_with_the_password(secured, redis) -> None:
    _, output, before = secured
    assert "torchkiln: sccache remote storage on (redis, read-write)" in output
    found = CCACHE_LINE.search(output)
    assert found, output[-3000:]
    misses, errors = int(found[2]), int(found[4])
    assert misses > 0 and errors == 0, found[0]
    assert keys(*redis) > before, "sccache wrote nothing: it did not authenticate"


def test_pip_authenticated_with_the_password_split_off_the_url(secured) -> None:
    project, output, _ = secured
    assert "authenticates to PIP_INDEX_URL as builder" in output
    masked = PyPI.simple_url.replace("://", "://builder:****@", 1)
    assert f"Looking in indexes: {masked}" in output
    override = (project.root / ".torchkiln" / "build-train.yaml").read_text()
    assert PyPI.simple_url.replace("://", "://builder@", 1) in override


def test_no_password_in_the_output_history_inspect_or_state(secured) -> None:
    project, output, _ = secured
    assert hidden_everywhere(output) == []
    image = project.image("train")
    history = assert_ok(project.run("docker", "history", "--no-trunc", image, timeout=60))
    assert "setup-user.sh" in history  # the search reads full commands
    inspected = assert_ok(project.run("docker", "image", "inspect", image, timeout=60))
    assert "io.torchkiln.checkout" in inspected
    assert hidden_everywhere(history) == [] and hidden_everywhere(inspected) == []
    for path in (project.root / ".torchkiln").iterdir():
        if path.is_file():
            assert hidden_everywhere(path.read_text(errors="replace")) == [], path.name
            if path.name.startswith("build-") and path.suffix in (".yaml", ".json"):
                assert path.stat().st_mode & 0o777 == 0o600, path.name


def test_doctor_reads_the_passwords_and_shows_neither(secured) -> None:
    project, _, _ = secured
    result = project.invoke("doctor")
    shown = result.stdout + result.stderr
    assert "Traceback" not in shown
    assert re.search(r"compile cache +ok +CCACHE_REMOTE answers \(read-write\)", shown), shown
    assert re.search(r"index password +WARN", shown) and "PIP_INDEX_TOKEN" in shown
    assert hidden_everywhere(shown) == []


@pytest.fixture
def restored_env(secured) -> Iterator[Project]:
    """The project, its .env put back afterwards (invoke env --force renames the project)."""
    project, _, _ = secured
    path = project.root / ".env"
    saved, mode = path.read_text(), path.stat().st_mode
    try:
        yield project
    finally:
        path.write_text(saved)
        path.chmod(mode)


def test_env_force_keeps_the_password_private_and_unprinted(restored_env: Project) -> None:
    project = restored_env
    (project.root / ".env").write_text(
        (project.root / ".env").read_text()
        + f"CCACHE_REMOTE='redis://:{CACHE_PASSWORD.replace(chr(39), '%27')}@cache:6379'\n"
    )
    env = Project(project.root, project.name, {k: v for k, v in project.env.items()
                                               if k != "CCACHE_REMOTE"})  # fmt: skip
    result = env.invoke("env", "--force", "--uid", "1234", "--gid", "1234", "--usr", "alice",
                        "--grp", "alice", "--cca", "8.6")  # fmt: skip
    said = assert_ok(result)
    assert "kept your CCACHE_REMOTE=redis://****@cache:6379" in said
    assert hidden_everywhere(said) == []
    path = project.root / ".env"
    assert path.stat().st_mode & 0o777 == 0o600
    backups = sorted(project.root.glob(".env.*"))
    assert backups and all(item.stat().st_mode & 0o777 == 0o600 for item in backups)
    values = envfile.read(path)
    remote = urllib.parse.unquote(values["CCACHE_REMOTE"].split("@")[0].split(":", 2)[2])
    assert remote == CACHE_PASSWORD  # survived, percent-encoded in .env
    assert "$" not in path.read_text().split("CCACHE_REMOTE=")[1].splitlines()[0]
    # And it is still the password the doctor's probe and the build read.
    doctor = env.invoke("doctor")
    assert "Traceback" not in doctor.stdout + doctor.stderr

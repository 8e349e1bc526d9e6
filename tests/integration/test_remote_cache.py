"""A compile cache a team shares (COMPILE_CACHE, sccache's second level), for real: Redis from
Debian's packages on the docker0 bridge's address (where build steps reach the host), builder A
(this engine) filling it with the CUDA fixtures' compiles, builder B (a second dockerd with empty
state, so an empty local sccache cache and no BuildKit layer) taking every compile from it; a
server that is down, and a read-only client.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import SecondEngine, bridge_address, free_port, redis_command, redis_server
from projects import Project, assert_ok, make_project, remove_project

from torchkiln import buildlog

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

# Compiles whose command line holds a random folder, new at every configure (never cacheable):
# the try-compiles of the PyTorch stand-in's three CMake projects (its CPU library with OpenMP,
# its CUDA libraries, PyTorch's own CMake through find_package(Torch)).
TRY_COMPILES = 6
SCCACHE_LINE = re.compile(
    r"torchkiln-sccache: pytorch hits=(\d+) misses=(\d+) remote_hits=(\d+|\?) remote_errors=(\d+)"
)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Redis on the bridge's address and a free port, with nothing saved to disk."""
    with redis_server(tmp_path_factory.mktemp("redis"), "--protected-mode", "no") as server:
        yield server


def keys(address: str, port: int) -> int:
    return int(redis_command(address, port, ("DBSIZE",)).strip().lstrip(":"))


def unique_sources(project: Project) -> list[str]:
    """The fixtures with translation units no cache has seen: sccache writes to the team's cache
    what it compiles, and copies no local hit up to it (unlike ccache's reshare), so a compile
    this engine ran before (another test's build of the same fixture) would be a local hit on A
    and a miss on B. A new constant changes each source; in a `.cu` a new kernel, because sccache
    caches nvcc's device steps (cicc, ptxas) apart, and an unused constant leaves the PTX, and so
    the ptxas step, as before."""
    fixtures = project.root / "tests" / "fixtures"
    tag = uuid.uuid4().hex
    for source in sorted((fixtures / "pytorch" / "csrc").rglob("*")):
        if source.suffix in (".c", ".cpp"):
            source.write_text(source.read_text() + f"\nstatic const long unique_{tag} = 1;\n")
        elif source.suffix == ".cu":
            kernel = f"\n__global__ void unique_{tag}(int* out) {{ *out = 1; }}\n"
            source.write_text(source.read_text() + kernel)
    return [
        "--source",
        f"pytorch={fixtures / 'pytorch'}",
        "--source",
        f"vision={fixtures / 'vision'}",
    ]


def compile_counts(output: str) -> tuple[int, int, int, int]:
    """hits, misses, remote hits (-1: not counted apart, a read-only store), remote errors."""
    found = SCCACHE_LINE.search(output)
    assert found, output[-3000:]
    return tuple(-1 if value == "?" else int(value) for value in found.groups())  # type: ignore[return-value]


def compile_seconds(output: str) -> float:
    return dict(buildlog.stage_seconds(output)).get("torch-build", 0.0)


def test_a_second_builder_takes_every_compile_from_the_first(
    redis, second_engine: SecondEngine, tmp_path: Path
) -> None:
    address, port = redis
    url = f"redis://{address}:{port}"
    project = make_project(tmp_path, "remote", CUDA_FROM="pypi", COMPILE_CACHE=url)
    try:
        doctor = project.invoke("doctor")
        assert re.search(r"compile cache +ok +COMPILE_CACHE answers \(read-write\)", doctor.stdout)
        sources = unique_sources(project)
        before = keys(address, port)
        first = assert_ok(project.invoke("wheels", "--dest", str(tmp_path / "a"), *sources))
        hits, misses, remote_hits, errors = compile_counts(first)
        assert misses > 0 and remote_hits == 0 and errors == 0
        assert keys(address, port) > before, "builder A wrote nothing to the remote cache"
        assert "sccache remote storage on (redis, read-write)" in first
        assert url not in first, "the cache URL (a secret) was printed"
        # Builder B: a fresh engine (empty local cache, no layer), and one build arg changed.
        other = Project(
            project.root,
            project.name,
            {**project.env, "DOCKER_HOST": second_engine.host, "MAX_JOBS": "1"},
        )
        second = assert_ok(other.invoke("wheels", "--dest", str(tmp_path / "b"), *sources))
        b_hits, b_misses, b_remote, b_errors = compile_counts(second)
        counts = (
            f"A hits {hits}, misses {misses}; B hits {b_hits} (remote {b_remote}), "
            f"misses {b_misses}"
        )
        print(f"\n{counts}\n" + "\n".join(x for x in second.splitlines() if "sccache" in x))
        # CMake's try-compiles run in a new random folder at every configure: those calls are
        # new by construction, on any builder. Every other compile A ran (its misses, written
        # through) is a hit from the remote on B. A's local hits on what this engine compiled
        # in earlier builds (CMake's own checks, the same on every build) were never written
        # through (sccache copies no local hit up), so B may compile those itself, no more.
        assert b_errors == 0 and b_remote >= misses - TRY_COMPILES > 0, counts
        assert b_misses <= TRY_COMPILES + hits and b_hits + b_misses == hits + misses, counts
        cold, warm = compile_seconds(first), compile_seconds(second)
        print(
            f"\nCUDA fixture compile (torch-build stage): builder A cold {cold:.1f} s, builder B "
            f"from the remote cache {warm:.1f} s, ratio {cold / max(warm, 0.1):.1f}; "
            f"A: {misses} misses; B: {b_remote} remote hits, {b_misses} misses"
        )
        for line in second.splitlines():
            if line.startswith("sccache:"):
                print(line)
                assert f"{b_remote} from the team's remote cache" in line
    finally:
        remove_project(project)


def test_a_server_that_is_down_warns_and_the_build_goes_on(tmp_path: Path) -> None:
    url = f"redis://{bridge_address()}:{free_port()}"
    project = make_project(tmp_path, "nocache", CUDA_FROM="pypi", COMPILE_CACHE=url)
    try:
        doctor = project.invoke("doctor")
        assert re.search(r"compile cache +WARN .*does not answer", doctor.stdout), doctor.stdout
        output = project.invoke("wheels", "--dest", str(tmp_path / "c"), *unique_sources(project))
        said = output.stdout + output.stderr
        assert output.returncode == 0, said[-3000:]
        assert f"warning: COMPILE_CACHE: redis://{bridge_address()}" in said
        _, misses, remote_hits, errors = compile_counts(said)
        assert misses > 0 and remote_hits == 0
        summary = next(line for line in said.splitlines() if line.startswith("sccache:"))
        if errors:
            assert "WARNING the remote cache failed" in summary
    finally:
        remove_project(project)


def test_a_read_only_client_writes_nothing(redis, tmp_path: Path) -> None:
    address, port = redis
    url = f"redis://{address}:{port}|read-only"
    project = make_project(tmp_path, "readonly", CUDA_FROM="pypi", COMPILE_CACHE=url)
    try:
        before = keys(address, port)
        output = assert_ok(
            project.invoke("wheels", "--dest", str(tmp_path / "d"), *unique_sources(project))
        )
        assert "sccache remote storage on (redis, read-only)" in output
        _, misses, remote_hits, errors = compile_counts(output)
        assert misses > 0 and errors == 0
        assert keys(address, port) == before
        # sccache gives no per-level figures for a read-only level: its hits are not called
        # local (remote_hits=0 said so, and the summary "0 from the team's remote cache").
        assert remote_hits == -1, output[-3000:]
    finally:
        remove_project(project)


def test_the_cache_url_is_a_secret_not_a_build_arg(redis, tmp_path: Path) -> None:
    address, port = redis
    url = f"redis://:s3cr3t-{uuid.uuid4().hex[:6]}@{address}:{port}"
    project = make_project(tmp_path, "secretcache", CUDA_FROM="none", COMPILE_CACHE=url)
    try:
        result = project.invoke("--dry", "build")
        printed = result.stdout + result.stderr
        assert url not in printed and "s3cr3t" not in printed
        override = json.loads((project.root / ".torchkiln" / "dry-build-train.yaml").read_text())
        assert "COMPILE_CACHE" not in override["services"]["train"]["build"]["args"]
    finally:
        remove_project(project)

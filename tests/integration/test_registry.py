"""Past one machine: push, registry build cache (mode=max) export and import, for real.

A local registry (Debian's docker-registry) listens on a free loopback port. The main engine
here uses the classic image store, whose docker-driver builder cannot export cache, so the
pushing side is a second, throw-away dockerd with the containerd image store, in a temporary
directory with its own socket and bridge. Wiping that engine's state and starting it again is
"a teammate's fresh machine": it rebuilds from the registry cache alone. The main engine (the
default setup most users have) then exports the wheels from the same registry cache.
Every process, bridge, firewall rule, image and directory made here is removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import SecondEngine, free_port, required_program, stop, wait_until
from projects import (
    BASE,
    BUILD_STAGES,
    Project,
    assert_ok,
    fixture_sources,
    make_project,
    remove_project,
)

from torchkiln import buildlog

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry on 127.0.0.1:<free port>, with its storage in a temporary directory."""
    binary = required_program("docker-registry")
    directory = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\n"
        f"http:\n  addr: {address}\n"
    )
    log = (directory / "log").open("w")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        wait_until(lambda: registry_answers(address), f"the registry at {address}")
        yield address
    finally:
        stop(process)
        log.close()


def registry_answers(address: str) -> bool:
    url = f"http://{address}/v2/"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
    return False


def registry_tags(address: str, repository: str) -> list[str]:
    url = f"http://{address}/v2/{repository}/tags/list"
    with urllib.request.urlopen(url, timeout=10) as response:
        return sorted(json.load(response)["tags"])


def unique_sources(project: Project) -> list[str]:
    """The fixture sources with a unique line, so no engine's cache already holds this build."""
    marker = f"# registry test {uuid.uuid4().hex}\n"
    for name in ("pytorch", "vision"):
        setup = project.root / "tests" / "fixtures" / name / "setup.py"
        setup.write_text(setup.read_text() + marker)
    return fixture_sources(project)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, registry: str, second_engine: SecondEngine):
    """The train image built on the second engine, pushed, with its mode=max cache exported."""
    repository = f"tktest-{uuid.uuid4().hex[:8]}/torchkiln"
    project = make_project(
        tmp_path_factory.mktemp("registry"), "registry", REGISTRY_IMAGE=f"{registry}/{repository}"
    )
    # Compose accepts a docker-driver builder only from the current engine, whose builder is
    # `default`; docker-container, kubernetes and remote builders are named as they were created.
    project.env = {**project.env, "DOCKER_HOST": second_engine.host}
    sources = unique_sources(project)
    try:
        started = time.monotonic()
        args = ("build", "--no-up", "--builder", "default", "--cache-to", "--push", *sources)
        output = assert_ok(project.invoke(*args))
        print(f"\npush build on the second engine (cold): {time.monotonic() - started:.0f} s")
        yield project, sources, repository, output
    finally:
        remove_project(project)


def test_push_exports_the_image_and_the_max_cache(pushed, registry: str) -> None:
    project, _, repository, output = pushed
    assert registry_tags(registry, repository) == ["train", "train-cache"]
    assert "mode=max" in output and "exporting cache to registry" in output
    assert f"pushed:      {registry}/{repository}:train" in output
    # The cache manifest lists the build stages' layers, not only the final image's (mode=max).
    url = f"http://{registry}/v2/{repository}/manifests/train-cache"
    request = urllib.request.Request(
        url, headers={"Accept": "application/vnd.oci.image.index.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        cache_layers = len(json.load(response)["manifests"])
    image = json.loads(
        assert_ok(project.run("docker", "image", "inspect", f"{registry}/{repository}:train"))
    )[0]
    image_layers = len(image["RootFS"]["Layers"])
    print(f"\ncache layers: {cache_layers}, image layers: {image_layers}")
    assert cache_layers > image_layers


def test_fresh_engine_rebuilds_from_the_registry_cache(
    pushed, registry: str, second_engine: SecondEngine
) -> None:
    """Wipe the engine (images, BuildKit cache): the rebuild re-runs no step, and wheels export."""
    project, sources, repository, _ = pushed
    second_engine.stop()
    second_engine.start()
    images = assert_ok(project.run("docker", "image", "ls", "--format", "{{.Repository}}"))
    assert images.split() == [BASE.split(":")[0]]
    started = time.monotonic()
    output = assert_ok(project.invoke("build", "--no-up", "--cache-from", *sources))
    print(f"\nrebuild from the registry cache: {time.monotonic() - started:.0f} s")
    executed = buildlog.executed_steps(output)
    print(f"steps re-run on the fresh engine: {executed}")
    assert "importing cache manifest" in output
    assert [step for step in executed if step[0] in BUILD_STAGES] == []
    assert [step for step in executed if step[1] == "RUN"] == []
    # The pushed image itself pulls onto the fresh engine and runs.
    reference = f"{registry}/{repository}:train"
    assert_ok(project.run("docker", "pull", reference))
    script = "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
    ran = project.run(
        "docker", "run", "--rm", "--network", "none", reference, "python", "-c", script
    )
    assert assert_ok(ran).split() == ["2.14.1", "0.29.1"]


def test_wheels_of_a_pushed_build_come_from_the_registry_cache(pushed, tmp_path: Path) -> None:
    """On the main engine (classic store, default builder), as a teammate's would be."""
    project, sources, _, _ = pushed
    teammate = {key: value for key, value in project.env.items() if key != "DOCKER_HOST"}
    teammate_project = Project(root=project.root, name=project.name, env=teammate)
    dest = tmp_path / "dist"
    started = time.monotonic()
    args = ("wheels", "--cache-from", "--dest", str(dest), *sources)
    output = assert_ok(teammate_project.invoke(*args))
    print(f"\nwheels from the registry cache, main engine: {time.monotonic() - started:.0f} s")
    executed = buildlog.executed_steps(output)
    print(f"steps re-run: {executed}")
    # Every compile comes from the cache; only the export's own repair of the wheels runs (the
    # image needs none of it, so the pushed build never ran it).
    assert [step for step in executed if step[1] == "RUN" and step[0] != "repair"] == []
    info = json.loads((dest / "BUILD-INFO.json").read_text())
    assert info["versions"] == {"torch": "2.14.1", "torchvision": "0.29.1"}
    for entry in info["wheels"]:
        assert entry["sha256"] == sha256(dest / entry["file"])

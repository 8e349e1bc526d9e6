"""Docker Swarm on the real engine: `invoke stack up/check/down` on a single-node swarm that the
test makes and leaves again (only when the engine was in none: a swarm that was there before
is never touched), with the CPU train image (gloo over the stack's overlay network)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from projects import assert_ok, dotenv_values

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


def swarm_state() -> str:
    return json.loads(docker("info", "--format", "{{json .Swarm}}").stdout)["LocalNodeState"]


@pytest.fixture
def own_swarm(wheels_project) -> Iterator[tuple[object, str]]:
    """A single-node swarm of the test's own, left again afterwards, with the project's stack
    removed even when the test fails."""
    project, _ = wheels_project
    name = dotenv_values(project.root / ".env")["COMPOSE_PROJECT_NAME"]
    state = swarm_state()
    if state != "inactive":
        pytest.skip(f"this engine is already in a swarm ({state}); the test does not touch it")
    # Before the swarm: the refusal names what to do.
    refused = project.invoke("stack", "up", "--nodes", "2", "--allow-cpu")
    assert refused.returncode != 0
    assert "this Docker engine is not in a swarm (state inactive)" in refused.stderr
    bridge_before = docker("network", "inspect", "docker_gwbridge").returncode == 0
    ours = True  # an init that times out may have made the swarm all the same
    try:
        made = docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        ours = made.returncode == 0  # a refused init made none: nothing of ours to leave
        assert ours, made.stderr
        try:
            yield project, name
        finally:
            remove_stack(name)
    finally:
        # Always, whatever failed or hung above: the shared engine is left as it was found.
        if ours:
            try:
                docker("swarm", "leave", "--force")
            finally:
                if not bridge_before:  # the bridge swarm init made; one in use stays
                    docker("network", "rm", "docker_gwbridge")


def remove_stack(name: str) -> None:
    """Remove the test's stack, its network and then its volume (once its tasks are gone)."""
    docker("stack", "rm", name)
    for _ in range(60):
        if docker("network", "inspect", f"{name}_torchkiln").returncode != 0:
            break
        subprocess.run(["sleep", "1"], timeout=5)
    # The tasks' containers go after the network: the volume is free once they are gone.
    for _ in range(60):
        if docker("volume", "rm", f"{name}_project").returncode == 0:
            break
        if docker("volume", "inspect", f"{name}_project").returncode != 0:
            break
        subprocess.run(["sleep", "1"], timeout=5)


def test_stack_up_check_down_on_a_single_node_swarm(own_swarm) -> None:
    project, name = own_swarm
    # No node advertises a GPU: a GPU stack is refused in one line.
    refused = project.invoke("stack", "up", "--nodes", "2")
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: --nodes 2 is more than this swarm's 0 ready node(s) with GPUs (of 1); advertise "
        "each node's GPUs as node-generic-resources NVIDIA-GPU=<GPU UUID> in its daemon.json, "
        "make drained nodes active, use fewer nodes, or --allow-cpu to run on the CPU"
    ]
    dry = assert_ok(project.invoke("--dry", "stack", "up", "--nodes", "2", "--allow-cpu"))
    assert "docker stack deploy --compose-file - --resolve-image never --prune" in dry
    assert '"replicas": 2' in dry and '"target": "/dev/shm"' in dry
    assert name not in docker("stack", "ls", "--format", "{{.Name}}").stdout.split()
    output = assert_ok(project.invoke("stack", "up", "--nodes", "2", "--allow-cpu"))
    assert f"stack {name}: train with 2 replica(s) on a swarm of 1 node(s)" in output
    assert name in docker("stack", "ls", "--format", "{{.Name}}").stdout.split()
    spec = json.loads(docker("service", "inspect", f"{name}_train").stdout)[0]["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2
    mounts = {mount["Target"]: mount for mount in spec["TaskTemplate"]["ContainerSpec"]["Mounts"]}
    assert mounts["/dev/shm"]["Type"] == "tmpfs"
    doctor = project.invoke("doctor")
    assert "in a swarm of 1 node(s), 0 with GPUs" in doctor.stdout, doctor.stdout
    checked = project.invoke("stack", "check")
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output[-3000:]
    assert "multi-node check: 2 ranks on 2 host(s), backend gloo" in output
    assert "all-reduce 3 = 2**2 - 1 on every rank" in output
    # The stack is back as up left it: train with 2 replicas, no check service.
    services = docker("stack", "services", "--format", "{{.Name}} {{.Replicas}}", name).stdout
    replicas = dict(line.split() for line in services.splitlines())
    assert list(replicas) == [f"{name}_train"] and replicas[f"{name}_train"].endswith("/2")
    assert_ok(project.invoke("stack", "down"))
    assert name not in docker("stack", "ls", "--format", "{{.Name}}").stdout.split()
    again = project.invoke("stack", "check")
    assert again.returncode != 0
    assert "no stack of this project is up; run invoke stack up --nodes N first" in again.stderr

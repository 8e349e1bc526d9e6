"""The multi-node check on the real engine: one torchrun job over 2 and 3 containers of the CPU
train image (gloo), each on a Docker network of the job's own; a node whose rendezvous address
is wrong times out and is named; bad input is one line; nothing is left behind."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from projects import EXEC_TIMEOUT

from torchkiln import multinode

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


def leftovers() -> str:
    """Containers and networks of any multi-node job still on the engine."""
    label = f"label={multinode.LABEL}"
    containers = subprocess.run(
        ["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True, timeout=60
    ).stdout
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", label],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return (containers + networks).strip()


def nox_smoke(project, *args: str) -> subprocess.CompletedProcess[str]:
    noxfile = str(project.root / "noxfile.py")
    command = (sys.executable, "-m", "nox", "-f", noxfile, "-s", "smoke", "--", *args)
    return project.run(*command, timeout=600)


@pytest.mark.parametrize("nodes", [2, 3], ids=["two-nodes", "three-nodes"])
def test_one_job_over_n_containers_gives_the_exact_sum(wheels_project, nodes: int) -> None:
    project, _ = wheels_project
    done = nox_smoke(project, "--nodes", str(nodes), "--allow-cpu")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f"multi-node check: {nodes} ranks on {nodes} host(s), backend gloo" in output
    # Each rank gave 1 << rank: the exact sum has every rank's bit once.
    assert f"all-reduce {2**nodes - 1} = 2**{nodes} - 1 on every rank" in output
    assert f"broadcast from rank {nodes - 1} reached all; barrier held" in output
    hosts = {f"node{k}" for k in range(nodes)}
    assert all(f" {host} " in output for host in hosts), output
    assert "Traceback" not in output
    assert not leftovers()


def test_a_node_with_a_wrong_rendezvous_address_times_out_and_is_named(wheels_project) -> None:
    project, _ = wheels_project
    job = multinode.plan_job(project.image("train"), 3, ["--allow-cpu", "--timeout", "15"], 0)
    started = time.monotonic()
    # Node 2 looks for the rendezvous on node1, where nothing listens: as a real job with a
    # wrong MASTER_ADDR, it must wait for the timeout, not pass and not hang.
    passed, text = multinode.run(job, {2: f"node1:{job.port}"})
    seconds = time.monotonic() - started
    assert not passed
    assert text.startswith("FAILED: node 2 never joined: no rendezvous at node1:29500 after 15 s")
    assert "\n" not in text
    assert seconds >= 15
    assert not leftovers()


def test_bad_input_gets_one_line(wheels_project) -> None:
    project, _ = wheels_project
    for args, words in (
        (["--nodes", "1", "--allow-cpu"], "--nodes 1: a multi-node check needs at least 2 nodes"),
        (["--nodes", "two"], "--nodes 'two' is not a number"),
        (["--nodes", "2", "--allow-cpu", "--port", "70000"], "--port '70000' is not a TCP port"),
        (["--nodes", "2"], "--nodes 2 with NCCL needs one GPU per container"),
    ):
        done = nox_smoke(project, *args)
        assert done.returncode != 0, args
        errors = [line for line in done.stderr.splitlines() if words in line]
        assert errors, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stdout + done.stderr
    # A container that does not start (no such image) is named with docker's reason.
    job = multinode.plan_job("torchkiln-test/no-such-image:none", 2, ["--allow-cpu"], 0)
    passed, text = multinode.run(job)
    assert not passed
    assert text.startswith(f"FAILED: node 0 ({job.container(0)}) did not start: ")
    assert not leftovers()


def test_a_rendezvous_port_in_use_is_one_line(wheels_project) -> None:
    project, _ = wheels_project
    script = (
        "import socket, subprocess, sys; s = socket.socket(); s.bind(('', 29500)); s.listen(); "
        "sys.exit(subprocess.call([sys.executable, '-m', 'torchkiln.inimage.multinode', "
        "'--nodes', '2', '--local', '--allow-cpu', '--port', '29500']))"
    )
    name = f"torchkiln-test-port-{uuid.uuid4().hex[:8]}"
    command = ["docker", "run", "--rm", "--name", name, "--label", f"{multinode.LABEL}={name}"]
    command += [project.image("train"), "python", "-c", script]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXEC_TIMEOUT)
    finally:  # a run that timed out leaves its container running: it goes too
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "multinode: port 29500 is in use on this machine (Address already in use); pass --port "
        "with a free one"
    ]

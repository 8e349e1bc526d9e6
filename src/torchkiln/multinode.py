"""`nox -s smoke -- --nodes N`: the multi-node check (torchkiln.inimage.multinode) as one torchrun
job over N containers of the service's image, on a Docker network of their own: the containers
see each other only by that network (node K is reachable as nodeK; node 0 hosts the c10d
rendezvous). gloo on the CPU with --allow-cpu, NCCL with one GPU per container otherwise.
The containers and the network are removed afterwards, whatever happened.
"""

from __future__ import annotations

import shlex
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchkiln import incontainer
from torchkiln.checkout import run_docker as docker
from torchkiln.errors import UserError
from torchkiln.hostfacts import run_probe
from torchkiln.inimage import multinode as inimage

LABEL = "io.torchkiln.multinode"


@dataclass(frozen=True)
class Job:
    """One multi-node check on this engine."""

    image: str
    nodes: int
    backend: str  # gloo | nccl
    port: int = inimage.DEFAULT_PORT
    timeout: float = inimage.DEFAULT_TIMEOUT_S
    run_id: str = ""
    shm_size: str = "1g"

    @property
    def network(self) -> str:
        return f"torchkiln-multinode-{self.run_id}"

    def container(self, node: int) -> str:
        return f"torchkiln-multinode-{self.run_id}-node{node}"


def take_nodes(args: Sequence[str]) -> tuple[int | None, list[str]]:
    """Take `--nodes N` (or `--nodes=N`) out of smoke's arguments; None when absent."""
    nodes, rest = None, []
    items = iter(args)
    for item in items:
        if item == "--nodes" or item.startswith("--nodes="):
            text = item.split("=", 1)[1] if "=" in item else next(items, "")
            if not text.lstrip("-").isdigit():
                raise UserError(f"--nodes '{text}' is not a number; pass --nodes 2 or more")
            nodes = int(text)
        else:
            rest.append(item)
    return nodes, rest


def take_value(args: list[str], name: str) -> str | None:
    """Take `--name V` out of args (in place); None when absent."""
    if name in args:
        at = args.index(name)
        if at + 1 >= len(args):
            raise UserError(f"{name} needs a value")
        value = args[at + 1]
        del args[at : at + 2]
        return value
    return None


def plan_job(image: str, nodes: int, args: Sequence[str], gpus: int) -> Job:
    """Decide the job from smoke's arguments; one line for what cannot run here."""
    rest = list(args)
    allow_cpu = "--allow-cpu" in rest
    rest = [item for item in rest if item != "--allow-cpu"]
    port_text = take_value(rest, "--port") or str(inimage.DEFAULT_PORT)
    timeout_text = take_value(rest, "--timeout") or str(int(inimage.DEFAULT_TIMEOUT_S))
    if rest:
        raise UserError(
            f"smoke --nodes takes --allow-cpu, --port and --timeout, not {shlex.join(rest)}"
        )
    try:
        inimage.check_counts(nodes, None)
    except inimage.MultinodeInputError as exc:
        raise UserError(str(exc)) from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"--port '{port_text}' is not a TCP port (1-65535); e.g. --port 29500")
    if not timeout_text.isdigit() or int(timeout_text) < 5:
        raise UserError(f"--timeout '{timeout_text}' is not a number of seconds >= 5")
    backend = "gloo" if allow_cpu else "nccl"
    if backend == "nccl" and gpus < nodes:
        raise UserError(
            f"--nodes {nodes} with NCCL needs one GPU per container, and this machine has "
            f"{gpus}; pass --allow-cpu for gloo on the CPU, or fewer nodes"
        )
    return Job(image, nodes, backend, int(port_text), float(timeout_text), uuid.uuid4().hex[:8])


def node_command(job: Job, node: int, rendezvous: str = "") -> list[str]:
    """`docker run -d` of node K, on the job's network as nodeK, running the node launcher;
    the image as built here (no registry is asked for one that is missing)."""
    gpu = ["--gpus", f"device={node}"] if job.backend == "nccl" else []
    check = ["python", "-m", "torchkiln.inimage.multinode", "--nodes", str(job.nodes)]
    check += ["--node", str(node), "--rdzv", rendezvous or f"node0:{job.port}"]
    check += ["--timeout", str(int(job.timeout)), "--run-id", job.run_id]
    check += ["--allow-cpu"] if job.backend == "gloo" else []
    return [
        "docker", "run", "-d", "--pull", "never", "--name", job.container(node),
        "--label", f"{LABEL}={job.run_id}",
        "--network", job.network, "--hostname", f"node{node}", "--network-alias", f"node{node}",
        "--shm-size", job.shm_size, *gpu, job.image, *check,
    ]  # fmt: skip


def network_command(job: Job) -> list[str]:
    """A bridge network of the job's own, with no route out (the ranks need none)."""
    return ["docker", "network", "create", "--internal", "--label", f"{LABEL}={job.run_id}",
            job.network]  # fmt: skip


def cleanup_commands(job: Job) -> list[list[str]]:
    """Remove the job's containers and then its network."""
    names = [job.container(node) for node in range(job.nodes)]
    return [["docker", "rm", "-f", *names], ["docker", "network", "rm", job.network]]


def wait_all(job: Job, started: Sequence[int]) -> None:
    """Wait until every started container has exited, or the job's time is up."""
    deadline = time.monotonic() + inimage.job_deadline(job.timeout)
    names = [job.container(node) for node in started]
    while time.monotonic() < deadline:
        states = docker(["docker", "inspect", "--format", "{{.State.Running}}", *names])
        if "true" not in states.stdout.split():
            return
        time.sleep(1)


def run(job: Job, rendezvous: Mapping[int, str] | None = None) -> tuple[bool, str]:
    """Run the job; return (passed, the table or one line naming what failed). `rendezvous`
    gives a node another rendezvous address than node0 (what a misconfigured node sees)."""
    rendezvous = rendezvous or {}
    try:
        made = docker(network_command(job))
        if made.returncode != 0:
            raise UserError(f"docker network create failed: {made.stderr.strip()[:300]}")
        started = []
        for node in range(job.nodes):
            done = docker(node_command(job, node, rendezvous.get(node, "")))
            if done.returncode != 0:
                reason = " ".join(done.stderr.split())[:300]
                return False, f"FAILED: node {node} ({job.container(node)}) did not start: {reason}"
            started.append(node)
        wait_all(job, started)
        logs = [docker(["docker", "logs", job.container(node)]) for node in started]
        text = "\n".join(log.stdout + log.stderr for log in logs)
        names = [f"node {node} ({job.container(node)})" for node in started]
        verdict = inimage.verdict_text(text, names)
        return verdict.endswith("OK"), verdict
    finally:
        for command in cleanup_commands(job):  # each, even when the one before failed
            try:
                docker(command)
            except UserError as error:
                print(
                    f"warning: {error}; remove it by hand: {shlex.join(command)}", file=sys.stderr
                )


def gpu_count() -> int:
    """How many GPUs nvidia-smi lists here (0 without a driver)."""
    code, out = run_probe(["nvidia-smi", "--list-gpus"])
    return sum(1 for line in out.splitlines() if line.startswith("GPU ")) if code == 0 else 0


def smoke_nodes(root: Path, args: Sequence[str]) -> str | None:
    """`smoke -- --nodes N [--service S] [--allow-cpu] [--port P] [--timeout S]`: the table of a
    job that passed; UserError with one line for one that failed; None without --nodes."""
    nodes, rest = take_nodes(args)
    if nodes is None:
        return None
    service, rest = incontainer.split_service(rest)
    image = incontainer.require_built(root, service)
    job = plan_job(image, nodes, rest, 0 if "--allow-cpu" in rest else gpu_count())
    passed, text = run(job)
    if not passed:
        raise UserError(text)
    return text

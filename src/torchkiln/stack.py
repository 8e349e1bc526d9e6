"""Docker Swarm as the engine for small clusters: `invoke stack up|check|down`.

The stack is the train service of the project's own compose file, as `docker compose config`
resolves it, deployed with `docker stack deploy`: replicas N (one per node with GPUs, each
reserving one GPU as a generic resource), an overlay network, /dev/shm at SHM_SIZE and
memlock unlimited as RDMA needs, the project from a path that exists on every node or a named
volume. `check` deploys the multi-node check as a service of the same stack (train scaled to 0
meanwhile, so the GPUs are free), reads its logs, and deploys the stack back as `up` left it.
Rendezvous goes through Swarm's DNS: tasks.<service> lists the tasks' addresses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkiln.checkout import run_docker as docker
from torchkiln.compose import STATE_DIR
from torchkiln.errors import UserError
from torchkiln.inimage import multinode as inimage

DOCKER_TIMEOUT_S = 120
GPU_KIND = "NVIDIA-GPU"  # the generic resource the service reserves, one per task
CHECK_SERVICE = "check"
NETWORK = "torchkiln"
PROJECT_VOLUME = "project"
SETTINGS_FILE = f"{STATE_DIR}/stack.json"  # what `up` deployed, for check and down


@dataclass(frozen=True)
class Swarm:
    """What this engine says about its swarm."""

    state: str  # inactive | pending | active | locked | error
    manager: bool
    nodes: int
    gpu_nodes: int

    @property
    def active(self) -> bool:
        return self.state == "active"


@dataclass(frozen=True)
class StackSettings:
    """What `invoke stack up` was asked for."""

    name: str
    nodes: int
    allow_cpu: bool = False
    project_path: str = ""  # a path on every node; '' for a named volume
    timeout: int = int(inimage.DEFAULT_TIMEOUT_S)


def gpu_count(generic: Sequence[Mapping[str, Any]] | None) -> int:
    """GPUs a node advertises as the generic resource the service reserves (GPU_KIND: discrete
    counts or named UUIDs); another kind ('gpu') cannot hold a task."""
    count = 0
    for resource in generic or []:
        for spec_name, spec in resource.items():
            if str(spec.get("Kind", "")) != GPU_KIND:
                continue
            count += int(spec.get("Value", 0)) if spec_name == "DiscreteResourceSpec" else 1
    return count


def can_run_tasks(node: Mapping[str, Any]) -> bool:
    """Tell whether Swarm places tasks on the node: ready and active (not down, paused or
    drained)."""
    ready = ((node.get("Status") or {}).get("State") or "") == "ready"
    return ready and ((node.get("Spec") or {}).get("Availability") or "") == "active"


def read_swarm(info: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> Swarm:
    """The swarm from `docker info` and `docker node inspect` (empty when not a manager)."""
    swarm = info.get("Swarm") or {}
    gpu_nodes = sum(
        1
        for node in nodes
        if can_run_tasks(node)
        and gpu_count(
            ((node.get("Description") or {}).get("Resources") or {}).get("GenericResources")
        )
    )
    return Swarm(
        state=str(swarm.get("LocalNodeState") or "inactive"),
        manager=bool(swarm.get("ControlAvailable")),
        nodes=int(swarm.get("Nodes") or 0),
        gpu_nodes=gpu_nodes,
    )


def swarm_here(info: Mapping[str, Any] | None = None) -> Swarm:
    """Ask the engine about its swarm; `info`: docker info's facts when they were read already
    (doctor's, through the SDK). On a manager, its nodes too."""
    try:
        if info is None:
            done = docker(["docker", "info", "--format", "{{json .}}"])
            if done.returncode != 0:
                raise UserError(f"docker info failed: {' '.join(done.stderr.split())[:300]}")
            info = json.loads(done.stdout)
        nodes: list[dict[str, Any]] = []
        if (info.get("Swarm") or {}).get("ControlAvailable"):
            ids = docker(["docker", "node", "ls", "-q"]).stdout.split()
            if ids:
                nodes = json.loads(docker(["docker", "node", "inspect", *ids]).stdout or "[]")
        return read_swarm(info, nodes)
    except (ValueError, AttributeError, TypeError) as error:
        raise UserError(
            f"docker info or docker node inspect answered what is not their JSON ({error}); "
            "run invoke doctor"
        ) from None


def refusal(swarm: Swarm, nodes: int, allow_cpu: bool) -> str | None:
    """Why `stack up --nodes N` cannot run on this swarm (None when it can)."""
    if not swarm.active:
        return (
            f"this Docker engine is not in a swarm (state {swarm.state}); make one with docker "
            "swarm init, or join one with the command docker swarm join-token worker prints on "
            "its manager"
        )
    if not swarm.manager:
        return "this engine is a swarm worker; run invoke stack on a manager node"
    if nodes < 1:
        return f"--nodes {nodes}: pass how many nodes the training service runs on (>= 1)"
    if not allow_cpu and nodes > swarm.gpu_nodes:
        return (
            f"--nodes {nodes} is more than this swarm's {swarm.gpu_nodes} ready node(s) with "
            f"GPUs (of {swarm.nodes}); advertise each node's GPUs as node-generic-resources "
            f"{GPU_KIND}=<GPU UUID> in its daemon.json, make drained nodes active, use fewer "
            "nodes, or --allow-cpu to run on the CPU"
        )
    return None


def shm_bytes(size: str) -> int:
    """Compose's SHM_SIZE ('16gb', '1g', '512m' or bytes) in bytes, for a tmpfs."""
    text = size.strip().lower().rstrip("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def stack_service(
    service: Mapping[str, Any], settings: StackSettings, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """The swarm service of the compose service (docker compose config's JSON), with what
    a swarm needs instead of what it cannot do (build, shm_size, device requests)."""
    project_root = str(service.get("working_dir") or "/opt/project")
    source = settings.project_path or PROJECT_VOLUME
    kind = "bind" if settings.project_path else "volume"
    deploy: dict[str, Any] = {
        "replicas": settings.nodes,
        "restart_policy": {"condition": "none" if command else "on-failure"},
        "placement": {},
    }
    spec: dict[str, Any] = {
        "image": service["image"],
        "working_dir": project_root,
        "environment": dict(service.get("environment") or {}),
        "init": bool(service.get("init", False)),
        "tty": bool(service.get("tty", False)) and not command,
        "stdin_open": bool(service.get("stdin_open", False)) and not command,
        "stop_signal": service.get("stop_signal", "SIGTERM"),
        "networks": [NETWORK],
        "volumes": [
            {"type": kind, "source": source, "target": project_root},
            # Swarm has no shm_size: a tmpfs of the same size at /dev/shm.
            {
                "type": "tmpfs",
                "target": "/dev/shm",
                "tmpfs": {"size": shm_bytes(str(service.get("shm_size") or "16gb"))},
            },
        ],
        "deploy": deploy,
    }
    if service.get("user"):
        spec["user"] = service["user"]
    if command:
        spec["command"] = list(command)
    if not settings.allow_cpu:
        deploy["placement"]["max_replicas_per_node"] = 1
        deploy["resources"] = {
            "reservations": {
                "generic_resources": [{"discrete_resource_spec": {"kind": GPU_KIND, "value": 1}}]
            }
        }
        # NCCL registers memory with the RDMA device: locked pages without a limit.
        spec["ulimits"] = {"memlock": {"soft": -1, "hard": -1}}
    return spec


def check_command(settings: StackSettings) -> list[str]:
    """The multi-node check in each task, rendezvous through tasks.<stack>_check."""
    command = ["python", "-m", "torchkiln.inimage.multinode", "--nodes", str(settings.nodes)]
    command += ["--rdzv-service", f"tasks.{settings.name}_{CHECK_SERVICE}"]
    command += ["--timeout", str(settings.timeout)]
    return command + (["--allow-cpu"] if settings.allow_cpu else [])


def stack_document(
    compose: Mapping[str, Any], settings: StackSettings, checking: bool = False
) -> dict[str, Any]:
    """The stack file: the train service (scaled to 0 while checking) and, while checking, the
    check service in its place; an attachable overlay network; the project volume."""
    train = stack_service(compose["services"]["train"], settings)
    services = {"train": train}
    if checking:
        train["deploy"]["replicas"] = 0
        services[CHECK_SERVICE] = stack_service(
            compose["services"]["train"], settings, check_command(settings)
        )
    document: dict[str, Any] = {
        "version": "3.9",
        "services": services,
        "networks": {NETWORK: {"driver": "overlay", "attachable": True}},
    }
    if not settings.project_path:
        document["volumes"] = {PROJECT_VOLUME: {}}
    return document


def deploy_command(name: str) -> list[str]:
    """`docker stack deploy` of the stack file on stdin; images as tagged here (no registry),
    services no longer in the file removed."""
    return [
        "docker", "stack", "deploy", "--compose-file", "-", "--resolve-image", "never",
        "--prune", "--detach=true", name,
    ]  # fmt: skip


def compose_model(root: Path) -> dict[str, Any]:
    """The project's compose model, resolved by Compose from the same compose file."""
    done = docker(["docker", "compose", "config", "--format", "json"], cwd=root)
    if done.returncode != 0:
        raise UserError(f"docker compose config failed: {' '.join(done.stderr.split())[:300]}")
    return json.loads(done.stdout)


def deploy(document: Mapping[str, Any], name: str) -> None:
    done = docker(deploy_command(name), stdin=json.dumps(document))
    if done.returncode != 0:
        raise UserError(f"docker stack deploy failed: {' '.join(done.stderr.split())[:400]}")


def task_states(service: str) -> list[tuple[str, str, str]]:
    """(name, desired state, current state) of each task of a service."""
    listed = docker(
        ["docker", "service", "ps", "--no-trunc", "--format",
         "{{.Name}}|{{.DesiredState}}|{{.CurrentState}}", service]
    )  # fmt: skip
    rows = [line.split("|") for line in listed.stdout.splitlines() if line.count("|") == 2]
    return [(row[0], row[1], row[2]) for row in rows]


def finished(states: Sequence[tuple[str, str, str]], nodes: int) -> bool:
    """Tell whether N tasks have ended (complete, failed, rejected or shut down)."""
    ended = ("Complete", "Failed", "Rejected", "Shutdown", "Orphaned")
    return len(states) >= nodes and all(state.startswith(ended) for _, _, state in states)


def wait_for_check(service: str, nodes: int, timeout: float) -> list[tuple[str, str, str]]:
    """Wait until the check's tasks have ended (or time is up); return their states."""
    deadline = time.monotonic() + timeout
    states = task_states(service)
    while time.monotonic() < deadline and not finished(states, nodes):
        time.sleep(2)
        states = task_states(service)
    return states


def check_verdict(logs: str, states: Sequence[tuple[str, str, str]], nodes: int) -> str:
    """The check's table, or one line: what failed, or the tasks that never ran."""
    if not finished(states, nodes):
        pending = [f"{name} ({state})" for name, _, state in states if not state.startswith("Comp")]
        return f"FAILED: tasks did not finish: {', '.join(pending) or 'none started'}"
    return inimage.verdict_text(logs, [name for name, _, _ in states])


# --- the tasks ------------------------------------------------------------------------------


def up(root: Path, nodes: int, allow_cpu: bool, project_path: str, dry: bool = False) -> str:
    """Deploy the training service to this engine's swarm; the settings are kept for check.
    `dry` (invoke --dry): print the command and the stack file, deploy nothing."""
    swarm = swarm_here()
    problem = refusal(swarm, nodes, allow_cpu)
    if problem:
        raise UserError(problem)
    if project_path and not project_path.startswith("/"):
        raise UserError(
            f"--project-path '{project_path}' is not absolute; name a path that exists on every "
            "node (a shared file system), or leave it out for a named volume"
        )
    compose = compose_model(root)
    settings = StackSettings(str(compose["name"]), nodes, allow_cpu, project_path)
    document = stack_document(compose, settings)
    if dry:
        command = " ".join(deploy_command(settings.name))
        return f"{command} <<'STACK'\n{json.dumps(document, indent=2)}\nSTACK"
    deploy(document, settings.name)
    path = root / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings.__dict__) + "\n")
    where = project_path or f"the named volume {settings.name}_{PROJECT_VOLUME} on each node"
    return (
        f"stack {settings.name}: train with {nodes} replica(s) on a swarm of {swarm.nodes} "
        f"node(s) ({swarm.gpu_nodes} with GPUs), network {settings.name}_{NETWORK}, project "
        f"from {where}; docker stack ps {settings.name} shows the tasks"
    )


def saved_settings(root: Path) -> StackSettings:
    """What `stack up` deployed here; one line when it has not run."""
    path = root / SETTINGS_FILE
    if not path.is_file():
        raise UserError("no stack of this project is up; run invoke stack up --nodes N first")
    try:
        saved = StackSettings(**json.loads(path.read_text(encoding="utf-8")))
        kinds = {"name": str, "nodes": int, "allow_cpu": bool, "project_path": str, "timeout": int}
        if not all(type(getattr(saved, name)) is kind for name, kind in kinds.items()):
            raise TypeError("a setting of another type")
    except (OSError, ValueError, TypeError) as error:
        raise UserError(
            f"{SETTINGS_FILE} cannot be read ({error}): damaged, or written by another torchkiln "
            "version; run invoke stack down; invoke stack up --nodes N"
        ) from None
    return saved


def check(root: Path) -> tuple[bool, str]:
    """Run the multi-node check as a service of the stack, then deploy the stack back."""
    settings = saved_settings(root)
    if settings.nodes < 2:
        raise UserError(
            f"the stack runs {settings.nodes} replica: the multi-node check needs 2 or more; "
            "invoke stack up --nodes 2"
        )
    problem = refusal(swarm_here(), settings.nodes, settings.allow_cpu)
    if problem:
        raise UserError(problem)
    compose = compose_model(root)
    service = f"{settings.name}_{CHECK_SERVICE}"
    try:
        deploy(stack_document(compose, settings, checking=True), settings.name)
        states = wait_for_check(service, settings.nodes, inimage.job_deadline(settings.timeout))
        logs = docker(["docker", "service", "logs", "--raw", "--no-trunc", service])
        verdict = check_verdict(logs.stdout + logs.stderr, states, settings.nodes)
    finally:
        deploy(stack_document(compose, settings), settings.name)
    return verdict.endswith("OK"), verdict


def down(root: Path) -> str:
    """Remove this project's stack (and nothing else), waiting until its network is gone."""
    name = str(compose_model(root)["name"])
    listed = docker(["docker", "stack", "ls", "--format", "{{.Name}}"])
    if name not in listed.stdout.split():
        (root / SETTINGS_FILE).unlink(missing_ok=True)
        return f"no stack {name} on this swarm; nothing removed"
    done = docker(["docker", "stack", "rm", name])
    if done.returncode != 0:
        raise UserError(f"docker stack rm {name} failed: {' '.join(done.stderr.split())[:300]}")
    deadline = time.monotonic() + DOCKER_TIMEOUT_S
    network = f"{name}_{NETWORK}"
    while time.monotonic() < deadline:
        if docker(["docker", "network", "inspect", network]).returncode != 0:
            break
        time.sleep(1)
    (root / SETTINGS_FILE).unlink(missing_ok=True)
    return f"stack {name} removed"


def swarm_row(swarm: Swarm) -> tuple[str, str, str]:
    """doctor's "swarm" row: (status, detail, fix); never an error, a swarm is optional."""
    if not swarm.active:
        return (
            "ok",
            f"not in a swarm ({swarm.state}); invoke stack needs one for several machines",
            "docker swarm init on the first machine; docker swarm join on the others",
        )
    role = "manager" if swarm.manager else "worker (run invoke stack on a manager)"
    if not swarm.manager:
        return "ok", f"in a swarm as a {role}", ""
    return (
        "ok",
        f"in a swarm of {swarm.nodes} node(s), {swarm.gpu_nodes} with GPUs as generic "
        f"resources; this engine is a {role}",
        "",
    )


def doctor_row(swarm: Mapping[str, Any]) -> tuple[str, str, str]:
    """doctor's "swarm" row from docker info's Swarm section (read once, by the SDK): a swarm
    that cannot be asked about is a warning, never a table left unprinted."""
    try:
        return swarm_row(swarm_here({"Swarm": swarm}))
    except UserError as error:
        return "warn", f"not checked: {error}", ""


def run_action(
    root: Path, action: str, nodes: int, allow_cpu: bool, project_path: str, dry: bool = False
) -> str:
    """`invoke stack ACTION`: the text to print; UserError for a refusal or a failed check.
    Under invoke --dry, up prints what it would deploy; check and down refuse to pretend."""
    if action == "up":
        return up(root, nodes, allow_cpu, project_path, dry)
    if dry and action in ("check", "down"):
        raise UserError(f"invoke --dry stack {action}: it only reads and removes; run it without")
    if action in ("check", "down") and (nodes or allow_cpu or project_path):
        raise UserError(f"stack {action} takes no options; stack up's are kept from its run")
    if action == "check":
        passed, text = check(root)
        if not passed:
            raise UserError(text)
        return text
    if action == "down":
        return down(root)
    raise UserError(
        f"stack action '{action}' is not one of up, check, down; invoke --help stack shows them"
    )

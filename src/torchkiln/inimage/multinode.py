"""The multi-node check: one torchrun job over N nodes (containers or machines), c10d rendezvous
on node 0, one rank per node; each rank runs torchkiln.inimage.multirank.

    python -m torchkiln.inimage.multinode --nodes N --node K --rdzv HOST:PORT [--allow-cpu]
    python -m torchkiln.inimage.multinode --nodes N --rdzv-service tasks.NAME [--port P]
    python -m torchkiln.inimage.multinode --nodes N --local [--port P] [--allow-cpu]

--node/--rdzv: this is node K and node 0 is reachable as HOST (one container of a Docker
network). --rdzv-service: a Swarm service's tasks; the node numbers follow the tasks' addresses
on the service's network (tasks.NAME in Swarm's DNS), node 0 the lowest. --local: N nodes on
this machine over loopback. gloo on the CPU with --allow-cpu, else NCCL on GPU LOCAL_RANK.

Each node prints the ranks' lines; the node holding rank 0 prints the summary (multirank.SUMMARY).
A node that cannot reach the rendezvous within --timeout says so in one line naming itself
(multirank.ERROR) and exits 3; bad input is one line and exit 2. Standard library only (torch is
imported by the ranks).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from torchkiln.inimage import multirank, ncclnet
from torchkiln.inimage.workers import free_port

DEFAULT_PORT = 29500
DEFAULT_TIMEOUT_S = 60.0
POLL_S = 0.5
WORK_S = 60  # beyond the rendezvous waits: torch imports, the checks, the bandwidth rounds
START_S = 60  # a host's margin over a node's limit: the container or task starting, the kill


def node_limit(timeout: float) -> float:
    """Seconds one node may take from its start before it stops its torchrun: the waits for
    the service's addresses and for node 0's port (--timeout each), torchrun's rendezvous
    (--timeout) and the ranks' work (--timeout and WORK_S)."""
    return 4 * timeout + WORK_S


def job_deadline(timeout: float) -> float:
    """How long a host (smoke --nodes, stack check, --local) waits for the nodes: a node's own
    limit and START_S more, so that every node has ended, and said why, before its host gives
    up on it."""
    return node_limit(timeout) + START_S


class MultinodeInputError(ValueError):
    """Bad input: one line for the user."""


@dataclass(frozen=True)
class Place:
    """Where this node is in the job: its number, the rendezvous host and whether it hosts it."""

    node: int
    host: str
    port: int

    @property
    def is_host(self) -> bool:
        return self.node == 0


def parse_endpoint(text: str) -> tuple[str, int]:
    """'node0:29500' -> ('node0', 29500); one line naming the input when it is not that."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MultinodeInputError(
            f"--rdzv '{text}' is not HOST:PORT; write it as the first node's name and a port, "
            f"e.g. node0:{DEFAULT_PORT}"
        )
    return host, int(port)


def check_counts(nodes: int, node: int | None) -> None:
    """N >= 2 and 0 <= K < N."""
    if nodes < 2:
        raise MultinodeInputError(
            f"--nodes {nodes}: a multi-node check needs at least 2 nodes; pass --nodes 2 or more"
        )
    if node is not None and not 0 <= node < nodes:
        raise MultinodeInputError(f"--node {node} is not in 0..{nodes - 1} (--nodes {nodes})")


def port_problem(port: int) -> str | None:
    """Say why the rendezvous port cannot be listened on here (None when it can)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError as exc:
            return (
                f"port {port} is in use on this machine ({exc.strerror}); pass --port with a "
                "free one"
            )
    return None


def reach(host: str, port: int, deadline: float) -> str | None:
    """Wait until HOST:PORT accepts a connection; None then, else the last reason."""
    reason = "not tried"
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return None
        except OSError as exc:
            reason = exc.strerror or str(exc)
        if time.monotonic() >= deadline:
            return reason
        time.sleep(POLL_S)


def order_addresses(addresses: Sequence[str]) -> list[str]:
    """The tasks' addresses in node order (numeric, lowest first)."""
    return sorted(set(addresses), key=ipaddress.ip_address)


def service_place(service: str, nodes: int, port: int, deadline: float) -> Place:
    """This task's node number among a Swarm service's tasks, once all N resolve."""
    addresses: list[str] = []
    while time.monotonic() < deadline:
        try:
            infos = socket.getaddrinfo(service, port, socket.AF_INET, socket.SOCK_STREAM)
            addresses = order_addresses([info[4][0] for info in infos])
        except OSError:
            addresses = []
        if len(addresses) >= nodes:
            break
        time.sleep(POLL_S)
    if len(addresses) != nodes:
        raise TimeoutError(
            f"{service} resolves to {len(addresses)} task address(es), not {nodes}, after the "
            "timeout: a task did not start or the service has another replica count"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((addresses[-1], port))  # no packet: the kernel picks our address there
        mine = probe.getsockname()[0]
    if mine not in addresses:
        raise TimeoutError(f"this task's address {mine} is not among {service}'s {addresses}")
    return Place(addresses.index(mine), addresses[0], port)


def torchrun_command(nodes: int, place: Place, timeout: float, run_id: str) -> list[str]:
    """torchrun with c10d rendezvous on node 0, one process per node, no restarts. The rank's
    settings go by environment (multirank.settings_environment): torchrun's own parser would
    take options written after the module."""
    conf = f"is_host={int(place.is_host)},join_timeout={int(timeout)},read_timeout={int(timeout)}"
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(nodes), "--nproc-per-node", "1", "--max-restarts", "0",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{place.host}:{place.port}",
        "--rdzv-id", run_id, "--rdzv-conf", conf,
        "-m", "torchkiln.inimage.multirank",
    ]  # fmt: skip


def run_group(command: Sequence[str], env: dict[str, str], limit: float) -> int | None:
    """Run a command in a process group of its own and wait at most `limit` seconds; then
    (None), or when interrupted, kill the whole group: torchrun and the ranks it started."""
    proc = subprocess.Popen(list(command), env=env, start_new_session=True)
    try:
        return proc.wait(timeout=max(limit, 0.1))
    except subprocess.TimeoutExpired:
        return None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group, if anything
        proc.wait()


def run_node(
    nodes: int, place: Place, backend: str, timeout: float, run_id: str, end: float = 0.0
) -> int:
    """Run this node's part: wait for the rendezvous (or check its port), then torchrun, all
    of it until `end` (time.monotonic(); node_limit from now when 0)."""
    end = end or time.monotonic() + node_limit(timeout)
    deadline = time.monotonic() + timeout
    if place.is_host:
        problem = port_problem(place.port)
        if problem:
            print(f"{multirank.ERROR}node 0: {problem}", flush=True)
            return 2
    else:
        reason = reach(place.host, place.port, deadline)
        if reason:
            print(
                f"{multirank.ERROR}node {place.node} never joined: no rendezvous at "
                f"{place.host}:{place.port} after {timeout:.0f} s ({reason}); check the "
                "first node's address and that the port is open between the machines",
                flush=True,
            )
            return 3
    with tempfile.TemporaryDirectory(prefix="torchkiln-nccl-") as logs:
        env = dict(os.environ, TORCHKILN_MULTINODE_STARTED=str(time.time()))
        if backend == "nccl":
            env.update(ncclnet.debug_environment(logs), TORCHKILN_NCCL_LOGS=logs)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root(), env.get("PYTHONPATH")]))
        env.update(multirank.settings_environment(backend, place.node, timeout))
        command = torchrun_command(nodes, place, timeout, run_id)
        code = run_group(command, env, end - time.monotonic())
    if code is None:
        print(
            f"{multirank.ERROR}node {place.node}: the job ran past {node_limit(timeout):.0f} s "
            f"(--timeout {timeout:.0f}); torchrun and its ranks were stopped",
            flush=True,
        )
        return 1
    if code != 0:
        print(f"{multirank.ERROR}node {place.node}: torchrun exited {code}", flush=True)
    return code


def package_root() -> str:
    """The folder holding this torchkiln package, for torchrun's children."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_local(nodes: int, port: int, backend: str, timeout: float) -> int:
    """N nodes on this machine over loopback, each its own torchrun; print their output."""
    port = port or free_port()
    problem = port_problem(port)
    if problem:
        raise MultinodeInputError(problem)
    run_id = f"local-{os.getpid()}"
    base = [sys.executable, "-m", "torchkiln.inimage.multinode", "--nodes", str(nodes)]
    base += ["--rdzv", f"127.0.0.1:{port}", "--timeout", str(int(timeout)), "--run-id", run_id]
    base += ["--allow-cpu"] if backend == "gloo" else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root(), env.get("PYTHONPATH")]))
    outputs = []
    procs = []
    for node in range(nodes):
        log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed below
        if backend == "nccl":
            env = dict(env, CUDA_VISIBLE_DEVICES=str(node))
        procs.append((subprocess.Popen([*base, "--node", str(node)], env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))  # fmt: skip
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=job_deadline(timeout)))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
        log.seek(0)
        outputs.append(log.read())
        log.close()
    text = "\n".join(outputs)
    print(verdict_text(text, [f"node {node}" for node in range(nodes)]), flush=True)
    return 0 if all(code == 0 for code in codes) and summary_of(text) else 1


def summary_of(text: str) -> dict | None:
    """The summary line's object when it is there and says ok, else None."""
    for line in text.splitlines():
        if line.startswith(multirank.SUMMARY):
            summary = json.loads(line[len(multirank.SUMMARY) :])
            return summary if summary["ok"] else None
    return None


def errors_of(text: str) -> list[str]:
    """The check's own error lines, a node that never joined first, and failing ranks."""
    lines = text.splitlines()
    found = [line[len(multirank.ERROR) :] for line in lines if line.startswith(multirank.ERROR)]
    for line in text.splitlines():
        if line.startswith(multirank.RANK_LINE):
            rank = json.loads(line[len(multirank.RANK_LINE) :])
            if not rank["ok"]:
                found.append(f"rank {rank['rank']} on node {rank['node']}: {rank['error']}")
    return sorted(dict.fromkeys(found), key=lambda line: "never joined" not in line)


def render(summary: dict) -> str:
    """The summary as a table, with the checks' verdicts."""
    world = summary["world"]
    ranks = summary["ranks"]
    head = (
        f"multi-node check: {world} ranks on {len({r['host'] for r in ranks})} host(s), "
        f"backend {summary['backend']}, rendezvous {summary['rendezvous_s']:.1f} s"
    )
    rows = [("rank", "node", "host", "transport", "bus GB/s", "barrier wait")]
    rows += [
        (str(r["rank"]), str(r["node"]), r["host"], r["transport"], f"{r['busbw_gbs']:.2f}",
         f"{r['barrier_wait_s']:.2f} s")
        for r in ranks
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head] + [
        "  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    size = ranks[0]["bandwidth_bytes"] >> 20
    lines.append(
        f"all-reduce {ranks[0]['sum']} = 2**{world} - 1 on every rank (each rank counted once); "
        f"broadcast from rank {world - 1} reached all; barrier held; bus bandwidth of a "
        f"{size} MiB all-reduce"
    )
    lines.append("OK")
    return "\n".join(lines)


def verdict_text(text: str, nodes: Sequence[str]) -> str:
    """The table when the job passed, else one line naming what failed (or which node)."""
    summary = summary_of(text)
    if summary:
        return render(summary)
    errors = errors_of(text)
    if errors:
        return (
            "FAILED: " + errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        )
    return f"FAILED: no summary from {', '.join(nodes)}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m torchkiln.inimage.multinode",
        description="Check one torchrun job over N nodes: all join, exact all-reduce, "
        "broadcast, barrier, bus bandwidth.",
        epilog="exit status: 0 the job passed, 1 it failed, 2 bad input, 3 a node never joined",
    )
    parser.add_argument("--nodes", type=int, required=True, help="how many nodes (>= 2)")
    parser.add_argument("--node", type=int, help="this node's number (with --rdzv)")
    parser.add_argument("--rdzv", metavar="HOST:PORT", help="node 0's address and port")
    parser.add_argument("--rdzv-service", metavar="NAME", help="Swarm: tasks.<service>")
    parser.add_argument("--local", action="store_true", help="N nodes on this machine")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    parser.add_argument("--allow-cpu", action="store_true", help="gloo on the CPU, not NCCL")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    parser.add_argument("--run-id", default="torchkiln-multinode", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backend = "gloo" if args.allow_cpu else "nccl"
    try:
        check_counts(args.nodes, args.node)
        if sum(bool(x) for x in (args.rdzv, args.rdzv_service, args.local)) != 1:
            raise MultinodeInputError("pass exactly one of --rdzv, --rdzv-service and --local")
        if args.local:
            return run_local(args.nodes, args.port, backend, args.timeout)
        end = time.monotonic() + node_limit(args.timeout)
        if args.rdzv_service:
            deadline = time.monotonic() + args.timeout
            place = service_place(args.rdzv_service, args.nodes, args.port, deadline)
        else:
            if args.node is None:
                raise MultinodeInputError("--rdzv needs --node K (this node's number)")
            host, port = parse_endpoint(args.rdzv)
            place = Place(args.node, host, port)
    except MultinodeInputError as exc:
        print(f"multinode: {exc}", file=sys.stderr, flush=True)
        return 2
    except TimeoutError as exc:
        print(f"{multirank.ERROR}{exc}", flush=True)
        return 3
    return run_node(args.nodes, place, backend, args.timeout, args.run_id, end)


if __name__ == "__main__":
    sys.exit(main())

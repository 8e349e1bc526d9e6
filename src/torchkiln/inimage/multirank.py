"""One rank of the multi-node check, started by torchrun (torchkiln.inimage.multinode).

Checked: every rank joins (an all-reduce of 1 << rank gives 2**world - 1 exactly, so a rank
counted twice or missing shows in the bits), a broadcast from the last rank reaches all, and a
barrier holds (the last rank comes 0.5 s late; every other rank must wait for it). Reported: the
world size, the backend, NCCL's transport from its own INFO lines, the bus bandwidth of a large
all-reduce, and the time from the node's start to the process group. Rank 0 prints the summary
as one JSON line after SUMMARY. Standard library and torch only.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
from typing import Any

from torchkiln.inimage import ncclnet

SUMMARY = "torchkiln-multinode-summary "
RANK_LINE = "torchkiln-multinode-rank "
ERROR = "torchkiln-multinode-error: "
BARRIER_DELAY_S = 0.5
TOKEN = 1_000_003  # what the last rank broadcasts (times the world size, plus its rank)
BANDWIDTH_BYTES = {"gloo": 16 << 20, "nccl": 256 << 20}
BANDWIDTH_ROUNDS = {"gloo": 3, "nccl": 10}


def bus_bandwidth(size_bytes: int, seconds: float, world: int) -> float:
    """nccl-tests' bus bandwidth of an all-reduce, in GB/s: algbw * 2 (n - 1) / n."""
    return size_bytes / seconds * 2 * (world - 1) / world / 1e9


def expected_bits(world: int) -> int:
    """The all-reduce's exact answer when each rank gives 1 << rank."""
    return (1 << world) - 1


def missing_ranks(got: int, world: int) -> list[int]:
    """The ranks whose bit is not set in an all-reduced value."""
    return [rank for rank in range(world) if not got >> rank & 1]


def checks(torch: Any, dist: Any, device: Any, backend: str) -> dict[str, Any]:
    """Run the checks on this rank; raise RuntimeError naming what went wrong."""
    rank, world = dist.get_rank(), dist.get_world_size()
    bits = torch.full((8,), 1 << rank, dtype=torch.int64, device=device)
    dist.all_reduce(bits)
    got = int(bits[0].item())
    if got != expected_bits(world) or not bool((bits == got).all().item()):
        raise RuntimeError(
            f"all-reduce gave {got}, not {expected_bits(world)} (2**{world} - 1); ranks "
            f"missing or counted twice: {missing_ranks(got, world)}"
        )
    token = TOKEN * world + world - 1
    sent = torch.full((8,), token if rank == world - 1 else -1, dtype=torch.int64, device=device)
    dist.broadcast(sent, src=world - 1)
    if not bool((sent == token).all().item()):
        raise RuntimeError(f"broadcast from rank {world - 1} gave {sent.tolist()}, not {token}")
    dist.barrier()
    if rank == world - 1:
        time.sleep(BARRIER_DELAY_S)
    entered = time.monotonic()
    dist.barrier()
    waited = time.monotonic() - entered
    if rank != world - 1 and waited < BARRIER_DELAY_S / 2:
        raise RuntimeError(
            f"barrier let rank {rank} through after {waited:.2f} s, before rank {world - 1} "
            f"(late by {BARRIER_DELAY_S} s) arrived"
        )
    size = BANDWIDTH_BYTES[backend]
    data = torch.ones(size // 4, dtype=torch.float32, device=device)
    dist.all_reduce(data)  # warm-up: NCCL sets up its channels here
    rounds = BANDWIDTH_ROUNDS[backend]
    synchronize(torch, device)
    started = time.perf_counter()
    for _ in range(rounds):
        dist.all_reduce(data)
    synchronize(torch, device)
    seconds = (time.perf_counter() - started) / rounds
    return {
        "sum": got,
        "broadcast": token,
        "barrier_wait_s": round(waited, 3),
        "busbw_gbs": round(bus_bandwidth(size, seconds, world), 3),
        "bandwidth_bytes": size,
    }


def synchronize(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def transport(backend: str, folder: str) -> str:
    """What carries the data: NCCL's own 'Using network' line, or gloo's TCP interface."""
    if backend == "nccl":
        found = ncclnet.read_debug_files(folder, os.getpid())
        return found.text() or "NCCL printed no 'Using network' line"
    interface = os.environ.get("GLOO_SOCKET_IFNAME", "")
    return f"TCP ({interface})" if interface else "TCP"


def run(backend: str, node: int, timeout: float) -> int:
    """Join the job, run the checks and print this rank's line; rank 0 prints the summary."""
    import torch
    import torch.distributed as dist

    started = float(os.environ.get("TORCHKILN_MULTINODE_STARTED") or time.time())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    options: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout)}
    if backend == "nccl":
        torch.cuda.set_device(device)
        options["device_id"] = device  # NCCL's communicator now, so its INFO lines are written
    dist.init_process_group(backend, **options)
    joined_s = time.time() - started
    rank, world = dist.get_rank(), dist.get_world_size()
    mine: dict[str, Any] = {"rank": rank, "node": node, "host": socket.gethostname()}
    mine["rendezvous_s"] = round(joined_s, 3)
    try:
        mine.update(checks(torch, dist, device, backend))
        mine["transport"] = transport(backend, os.environ.get("TORCHKILN_NCCL_LOGS", ""))
        mine["ok"] = True
    except Exception as exc:  # reported as this rank's line, never a traceback
        mine["ok"], mine["error"] = False, f"{type(exc).__name__}: {exc}"
    print(RANK_LINE + json.dumps(mine), flush=True)
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        summary = {
            "ok": all(item["ok"] for item in everyone),
            "world": world,
            "backend": backend,
            "rendezvous_s": max(item["rendezvous_s"] for item in everyone),
            "ranks": sorted(everyone, key=lambda item: item["rank"]),
        }
        print(SUMMARY + json.dumps(summary), flush=True)
    dist.destroy_process_group()
    return 0 if mine["ok"] else 1


def settings_environment(backend: str, node: int, timeout: float) -> dict[str, str]:
    """What the node launcher tells its rank, through torchrun's environment."""
    return {
        "TORCHKILN_MULTINODE_BACKEND": backend,
        "TORCHKILN_MULTINODE_NODE": str(node),
        "TORCHKILN_MULTINODE_TIMEOUT": str(int(timeout)),
    }


def main() -> int:
    """Run this rank with the settings the node launcher put in the environment."""
    backend = os.environ.get("TORCHKILN_MULTINODE_BACKEND", "gloo")
    node = int(os.environ.get("TORCHKILN_MULTINODE_NODE", "0"))
    timeout = float(os.environ.get("TORCHKILN_MULTINODE_TIMEOUT", "60"))
    try:
        return run(backend, node, timeout)
    except Exception as exc:
        print(f"{ERROR}node {node}: {type(exc).__name__}: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

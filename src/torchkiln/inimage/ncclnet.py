"""What NCCL can use between machines here: smoke's "NCCL network" row, and the reading of
NCCL's own INFO lines that the multi-node check reports.

Nothing is guessed from file names: the verbs library is asked for its devices
(ibv_get_device_list, through ctypes) and NCCL is asked which network it picks (a one-rank
communicator in a child process with NCCL_DEBUG=INFO, whose "Using network X" line is NCCL's
own answer). Standard library and torch only.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from torchkiln.inimage import runtimelibs
from torchkiln.inimage.report import CheckFailed, CheckSkipped, CheckWarned, one_line

# NCCL's INFO lines (src/init.cc and src/transport/net_ib, unchanged from 2.21 to 2.30):
# "Using network IB|Socket|<plugin>", "NET/IB : No device found.", "NET/IB : Using [0]mlx5_0:1/IB
# [RO]; OOB eth0:10.0.0.2<0>", "NET/Socket : Using [0]eth0:172.18.0.2<0>", and the plugin loader.
USING_NETWORK = re.compile(r"NCCL INFO Using network (\S+)")
NET_USING = re.compile(r"NCCL INFO NET/(\w+) ?: Using (.+?)(?:;|$)")
IB_NONE = re.compile(r"NCCL INFO NET/IB ?: No device found")
NCCL_VERSION = re.compile(r"NCCL version (\S+)")
PROBE_TIMEOUT_S = 60

# A one-rank NCCL communicator on GPU 0 in a child process: NCCL prints its choice of network
# on creation. The child's file is NCCL_DEBUG_FILE (%h host, %p pid are NCCL's own fields).
PROBE = r"""
import datetime, os, sys
import torch
import torch.distributed as dist
torch.cuda.set_device(0)
dist.init_process_group("nccl", rank=0, world_size=1, init_method="tcp://127.0.0.1:" + sys.argv[1],
                        timeout=datetime.timedelta(seconds=30), device_id=torch.device("cuda", 0))
t = torch.ones(1, device="cuda")
dist.all_reduce(t)
torch.cuda.synchronize()
dist.destroy_process_group()
"""


@dataclass
class NcclNetwork:
    """What NCCL's INFO lines say about its network."""

    network: str = ""  # "IB", "Socket" or a plugin's name, from "Using network X"
    devices: dict[str, str] = field(default_factory=dict)  # transport -> what it uses
    ib_none: bool = False  # "NET/IB : No device found."
    version: str = ""

    def text(self) -> str:
        """'Socket (eth0:172.18.0.2)' or 'IB ([0]mlx5_0:1/IB)'; '' when NCCL said nothing."""
        if not self.network:
            return ""
        used = self.devices.get(self.network, "")
        return f"{self.network} ({used})" if used else self.network


def read_info_lines(text: str) -> NcclNetwork:
    """Read NCCL's INFO lines (NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS=INIT,NET)."""
    found = NcclNetwork()
    for line in text.splitlines():
        if match := USING_NETWORK.search(line):
            found.network = match[1]
        elif match := NET_USING.search(line):
            found.devices[match[1]] = re.sub(r"<\d+>", "", match[2].strip())
        elif IB_NONE.search(line):
            found.ib_none = True
        elif match := NCCL_VERSION.search(line):
            found.version = match[1]
    return found


def debug_environment(folder: str) -> dict[str, str]:
    """NCCL's INFO lines about init and network, one file per process under `folder`."""
    return {
        "NCCL_DEBUG": "INFO",
        "NCCL_DEBUG_SUBSYS": "INIT,NET",
        "NCCL_DEBUG_FILE": os.path.join(folder, "nccl.%h.%p.log"),
    }


def read_debug_files(folder: str, pid: int | None = None) -> NcclNetwork:
    """NCCL's INFO lines from the files debug_environment names (one process's, or all)."""
    text = ""
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith("nccl.") and (pid is None or name.endswith(f".{pid}.log")):
            with open(os.path.join(folder, name), errors="replace") as handle:
                text += handle.read()
    return read_info_lines(text)


@dataclass
class Verbs:
    """The verbs library's answer: loaded or not, and the RDMA devices it lists."""

    loaded: bool
    devices: list[str]
    error: str = ""


def ask_verbs(name: str = "libibverbs.so.1") -> Verbs:
    """Load the verbs library and list its devices, as NCCL's IB transport does first."""
    try:
        library = ctypes.CDLL(name, use_errno=True)  # else get_errno() is always 0
    except OSError as exc:
        return Verbs(False, [], str(exc))
    library.ibv_get_device_list.restype = ctypes.POINTER(ctypes.c_void_p)
    library.ibv_get_device_list.argtypes = [ctypes.POINTER(ctypes.c_int)]
    library.ibv_get_device_name.restype = ctypes.c_char_p
    library.ibv_get_device_name.argtypes = [ctypes.c_void_p]
    library.ibv_free_device_list.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    count = ctypes.c_int(0)
    listed = library.ibv_get_device_list(ctypes.byref(count))
    if not listed:
        return Verbs(True, [], f"ibv_get_device_list failed (errno {ctypes.get_errno()})")
    try:
        names = [library.ibv_get_device_name(listed[i]).decode() for i in range(count.value)]
    finally:
        library.ibv_free_device_list(listed)
    return Verbs(True, names)


def verbs_text(verbs: Verbs) -> str:
    """'verbs: 2 RDMA devices (mlx5_0, mlx5_1)' or why there are none."""
    if not verbs.loaded:
        return "verbs: libibverbs.so.1 not found"
    if verbs.devices:
        return f"verbs: {len(verbs.devices)} RDMA device(s) ({', '.join(verbs.devices)})"
    where = "" if os.path.isdir("/dev/infiniband") else "; no /dev/infiniband in this container"
    return f"verbs: no RDMA device{where}"


class NcclProbe:
    """A one-rank NCCL communicator in a child process, started at construction so that its
    torch import and NCCL set-up overlap smoke's other checks; `result()` reads what NCCL said."""

    def __init__(self, timeout: float = PROBE_TIMEOUT_S) -> None:
        from torchkiln.inimage.workers import free_port

        self.timeout = timeout
        self.folder = tempfile.TemporaryDirectory(prefix="torchkiln-nccl-")
        env = {**os.environ, **debug_environment(self.folder.name)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(free_port())],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self) -> NcclNetwork:
        """Wait for the child; NCCL's answer, or CheckFailed with the child's last line."""
        try:
            _, errors = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise CheckFailed(
                f"a one-rank NCCL communicator did not start within {self.timeout:.0f} s"
            ) from None
        try:
            found = read_debug_files(self.folder.name)
        finally:
            self.folder.cleanup()
        if self.proc.returncode != 0:
            lines = [line for line in errors.splitlines() if line.strip()]
            raise CheckFailed(
                "a one-rank NCCL communicator failed: " + one_line(lines[-1] if lines else "", 300)
            )
        return found


def nccl_built(torch: Any) -> bool:
    """Tell whether this torch has NCCL (a CUDA build with USE_NCCL and USE_DISTRIBUTED)."""
    if torch.version.cuda is None:
        return False
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_nccl_available())


def start_probe(torch: Any) -> NcclProbe | None:
    """Start NCCL's answer early (None without NCCL, or when it cannot start)."""
    try:
        return NcclProbe() if nccl_built(torch) else None
    except Exception:  # the check asks again and reports the error
        return None


def check_nccl_network(torch: Any, gpu: bool, probe: NcclProbe | None = None) -> str:
    """Smoke's "NCCL network" row: NCCL's own choice of network (with a GPU), the verbs
    library's RDMA devices, and a warning naming what is lost when the library is missing."""
    if torch.version.cuda is None:
        raise CheckSkipped("CPU build: no NCCL; gloo's TCP between machines")
    verbs = ask_verbs()
    parts = []
    if gpu and not nccl_built(torch):
        raise CheckFailed("torch.distributed has no NCCL backend: nothing to ask")
    if gpu:
        found = (probe or NcclProbe()).result()
        network = found.text() or "no 'Using network' line"
        version = f"NCCL {found.version} " if found.version else "NCCL "
        parts.append(f"{version}uses {network}")
        if found.ib_none:
            parts.append("NET/IB: no device found")
    else:
        parts.append("NCCL not asked: no GPU")
    parts.append(verbs_text(verbs))
    detail = "; ".join(parts)
    if not verbs.loaded:
        entry = runtimelibs.by_name("libibverbs.so.1")
        raise CheckWarned(f"{detail}: {entry.lost}; {entry.fix}")
    return detail

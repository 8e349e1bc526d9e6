"""Libraries that NCCL and torch open at run time (dlopen), which no DT_NEEDED entry names, so
the link audit cannot see them missing; without them NCCL falls back to TCP sockets with no
error. A short table, each entry with where the fact comes from, and the audit's rule: an image
holding NCCL must hold them, else a warning that names what is lost and the Debian package.
Standard library only.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

NCCL = re.compile(r"libnccl\.so(\.\d+)*$")


@dataclass(frozen=True)
class RuntimeLibrary:
    """One library opened at run time: by whom, what is lost without it, where it comes from."""

    name: str  # the soname dlopen asks for, or a glob under the system library folder
    opened_by: str
    lost: str
    package: str  # Debian's package (rdma-core's user-space libraries)
    source: str  # where the fact comes from

    @property
    def fix(self) -> str:
        """The command that brings it back."""
        return f"apt-get install {self.package}"


TABLE = (
    RuntimeLibrary(
        "libibverbs.so.1",
        "NCCL's IB transport and NVSHMEM's IB transports",
        "NCCL: InfiniBand/RoCE unavailable, sockets only",
        "libibverbs1",
        'NCCL src/misc/ibvsymbols.cc: dlopen("libibverbs.so"), then "libibverbs.so.1"; '
        'NVSHMEM nvshmemt_ibv_ftable_init: dlopen("libibverbs.so.1")',
    ),
    RuntimeLibrary(
        "libibverbs/*-rdmav*.so",
        "libibverbs (its providers: mlx5, efa, bnxt_re, ...)",
        "NCCL: no RDMA device can be opened (no verbs provider), sockets only",
        "ibverbs-providers",
        "rdma-core libibverbs/dynamic_driver.c: each provider is dlopen'ed from "
        "<libdir>/libibverbs/lib<name>-rdmav<ABI>.so",
    ),
    RuntimeLibrary(
        "librdmacm.so.1",
        "RDMA connection management (cuFile's libcufile_rdma.so, UCX/NVSHMEM transports)",
        "GPUDirect Storage and RDMA connection management unavailable",
        "librdmacm1",
        "DT_NEEDED of nvidia-cufile's libcufile_rdma.so, a plugin nothing links "
        "(loaded when cuFile's RDMA is asked for)",
    ),
)


def by_name(name: str) -> RuntimeLibrary:
    """The table's entry for a library."""
    return next(entry for entry in TABLE if entry.name == name)


def holds_nccl(names: Iterable[str]) -> bool:
    """Tell whether the audited files hold or link NCCL (libnccl.so.2 by file or DT_NEEDED)."""
    return any(NCCL.search(os.path.basename(name)) for name in names)


def missing(
    names: Iterable[str],
    resolve: Callable[[str], str],
    libdirs: Iterable[str],
) -> list[RuntimeLibrary]:
    """The table's libraries that do not resolve here, when the files named hold NCCL.
    `resolve(soname)` answers as the dynamic linker would for dlopen (a path or ''); a glob
    entry is looked for under each system library folder."""
    if not holds_nccl(names):
        return []
    folders = list(libdirs)
    lost = []
    for entry in TABLE:
        if "*" in entry.name:
            found = any(glob.glob(os.path.join(folder, entry.name)) for folder in folders)
        else:
            found = bool(resolve(entry.name))
        if not found:
            lost.append(entry)
    return lost


def warning_text(lost: Iterable[RuntimeLibrary]) -> str:
    """'libibverbs.so.1 (opened at run time by ...): NCCL: ... ; apt-get install libibverbs1'."""
    return "; ".join(
        f"{entry.name} not found (opened at run time by {entry.opened_by}): {entry.lost}; "
        f"{entry.fix}"
        for entry in lost
    )

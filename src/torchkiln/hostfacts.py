"""Facts read off the host: the user, the time zone, the GPUs. Thin functions with effects."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from torchkiln import gpu


@dataclass(frozen=True)
class HostUser:
    """Who runs the tasks on the host."""

    uid: int
    gid: int
    user: str
    group: str


def host_user() -> HostUser:
    """Read the invoking user's ids and names (names fall back to ids when not in the db)."""
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = os.environ.get("USER", f"u{uid}")
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = f"g{gid}"
    return HostUser(uid, gid, user, group)


def host_timezone(etc: Path = Path("/etc")) -> str:
    """Name the host's time zone from /etc/timezone or the /etc/localtime link, else UTC."""
    try:
        name = (etc / "timezone").read_text(encoding="utf-8").strip()
        if name:
            return name
    except OSError:
        pass
    try:
        target = os.readlink(etc / "localtime")
    except OSError:
        return "UTC"
    marker = "zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else "UTC"


def run_probe(command: list[str], timeout: float = 15) -> tuple[int, str]:
    """Run a probe command; return (exit code, stdout), 127 when it is not installed."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, ""
    except subprocess.TimeoutExpired:
        return 124, ""
    return result.returncode, result.stdout


def gpu_compute_capabilities() -> str:
    """Return the host GPUs' unique compute capabilities as a CCA, '' when none is found."""
    code, out = run_probe(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    return gpu.detected_cca(out) if code == 0 else ""


def gpu_driver_version() -> str:
    """Return the NVIDIA driver version, '' when no driver answers."""
    code, out = run_probe(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if code == 0 and lines else ""

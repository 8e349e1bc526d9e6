"""Facts read off the host: the user, the time zone, the GPUs. Thin functions with effects."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import subprocess
import urllib.parse
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


def cache_server_problem(url: str, timeout: float = 3) -> str:
    """Say why the compile cache server of a CCACHE_REMOTE URL does not answer ('' when it does,
    or when there is none). Redis must answer PING; an HTTP server, any status."""
    if not url:
        return ""
    parsed = urllib.parse.urlsplit(url.split("|", 1)[0])
    default = {"redis": 6379, "http": 80, "https": 443}[parsed.scheme]
    host, port = parsed.hostname or "", parsed.port or default
    where = f"{parsed.scheme}://{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            if parsed.scheme != "redis":
                return ""
            connection.sendall(b"PING\r\n")
            answer = connection.recv(64)
    except OSError as error:
        return f"{where} does not answer ({error.strerror or error})"
    # +PONG, or -NOAUTH when a password is needed: either way a Redis server is there.
    if answer.startswith((b"+PONG", b"-NOAUTH", b"-ERR")):
        return ""
    return f"{where} answered, but not as Redis ({answer[:20]!r})"


def gpu_compute_capabilities() -> str:
    """Return the host GPUs' unique compute capabilities as a CCA, '' when none is found."""
    code, out = run_probe(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    return gpu.detected_cca(out) if code == 0 else ""


def gpu_driver_version() -> str:
    """Return the NVIDIA driver version, '' when no driver answers."""
    code, out = run_probe(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if code == 0 and lines else ""

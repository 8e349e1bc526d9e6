"""Engines and servers the integration tests start for themselves: a second, throw-away dockerd
(an empty builder on the same host) and the helpers to start and stop such processes. Every
process, bridge, firewall rule and directory made here is removed by its owner fixture.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from projects import BASE, assert_ok

START_TIMEOUT = 60
COMMAND_TIMEOUT = 120


def run(command: list[str], timeout: int = COMMAND_TIMEOUT, **options):
    """Run a helper command, capturing its output; never raises on failure."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def debian_program(name: str) -> str:
    """Find a program; install Debian's package of that name when running as root (CI) and it is
    missing. '' when it cannot be had."""
    found = shutil.which(name)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found or ""
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", name]
    if run(install, timeout=300, env=environment).returncode != 0:
        run(["apt-get", "update", "-qq"], timeout=300, env=environment)
        run(install, timeout=300, env=environment)
    return shutil.which(name) or ""


def required_program(name: str) -> str:
    """debian_program, else skip the test (fail it with TORCHKILN_REQUIRE_DOCKER=1)."""
    import pytest

    binary = debian_program(name)
    if not binary:
        message = f"{name} is not installed (apt-get install -y {name})"
        if os.environ.get("TORCHKILN_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def wait_until(check, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up within {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """End a process this module started: SIGTERM, then SIGKILL after a bounded wait."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class SecondEngine:
    """A throw-away dockerd with the containerd image store, in its own directory and bridge.

    Its bridge gets a masquerade rule so build steps can download (apt, pip) as on the main
    engine; the rules and the bridge are removed with the engine.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.bridge = f"tk{uuid.uuid4().hex[:8]}"
        self.subnet = free_subnet()
        self.process: subprocess.Popen | None = None
        self.rules: list[list[str]] = []

    def setup_network(self) -> None:
        gateway = f"{next(self.subnet.hosts())}/{self.subnet.prefixlen}"
        for command in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", gateway, "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            assert_ok(run(command))
        for rule in (
            ["-t", "nat", "POSTROUTING", "-s", str(self.subnet), "!", "-o", self.bridge,
             "-j", "MASQUERADE"],
            ["-t", "filter", "FORWARD", "-i", self.bridge, "-j", "ACCEPT"],
            ["-t", "filter", "FORWARD", "-o", self.bridge, "-j", "ACCEPT"],
        ):  # fmt: skip
            table, chain, spec = rule[:2], rule[2], rule[3:]
            assert_ok(run(["iptables", "-w", *table, "-I", chain, *spec]))
            self.rules.append(["iptables", "-w", *table, "-D", chain, *spec])

    def start(self) -> None:
        """Start dockerd on an empty state and give it the base image."""
        data = self.directory / "data"
        config = self.directory / "daemon.json"
        config.write_text(
            json.dumps(
                {
                    "features": {"containerd-snapshotter": True},
                    "bridge": self.bridge,
                    "iptables": False,
                    "ip6tables": False,
                    "ip-forward": False,
                    "ip-masq": False,
                }
            )
        )
        log = (self.directory / "dockerd.log").open("a")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--config-file", str(config),
                "--data-root", str(data),
                "--exec-root", str(self.directory / "exec"),
                "--pidfile", str(self.directory / "docker.pid"),
                "--host", self.host,
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        wait_until(
            lambda: run(["docker", "--host", self.host, "info"], timeout=10).returncode == 0,
            "the second dockerd",
        )
        with subprocess.Popen(["docker", "save", BASE], stdout=subprocess.PIPE) as saved:
            loaded = run(["docker", "--host", self.host, "load"], stdin=saved.stdout, timeout=300)
            saved.wait(timeout=300)
        assert_ok(loaded)
        assert saved.returncode == 0

    def stop(self) -> None:
        """Stop dockerd (and the containerd it started) and delete its whole state."""
        if self.process is not None:
            stop(self.process, timeout=60)
            self.process = None
        for name in ("data", "exec"):
            path = self.directory / name
            mounts = run(["findmnt", "-rn", "-o", "TARGET"]).stdout.split()
            for mount in sorted((m for m in mounts if m.startswith(str(path))), reverse=True):
                run(["umount", "-l", mount])
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        self.stop()
        for rule in reversed(self.rules):
            run(rule)
        run(["ip", "link", "del", self.bridge])


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 172.31.0.0/16 that no interface here uses."""
    used = run(["ip", "-4", "-o", "addr"]).stdout
    for third in range(200, 255):
        subnet = ipaddress.IPv4Network(f"172.31.{third}.0/24")
        if f"172.31.{third}." not in used:
            return subnet
    raise AssertionError("no free 172.31.x.0/24 for the second engine's bridge")


def bridge_address() -> str:
    """The docker0 bridge's address on the host: build steps reach the host there."""
    shown = run(["docker", "network", "inspect", "bridge", "--format",
                 "{{(index .IPAM.Config 0).Gateway}}"], check=True)  # fmt: skip
    return shown.stdout.strip()


def redis_command(address: str, port: int, *commands: tuple[str, ...]) -> str:
    """Send commands to a test Redis in its own protocol (no client library) on one
    connection; return the last answer."""
    answer = ""
    with socket.create_connection((address, port), timeout=5) as connection:
        for command in commands:
            parts = [f"${len(part.encode())}\r\n{part}\r\n" for part in command]
            connection.sendall(f"*{len(command)}\r\n{''.join(parts)}".encode())
            answer = connection.recv(4096).decode()
    return answer


@contextmanager
def redis_server(directory: Path, *options: str) -> Iterator[tuple[str, int]]:
    """Redis from Debian's package on the bridge's address and a free port, nothing saved to
    disk; skip (or fail with TORCHKILN_REQUIRE_DOCKER=1) where it is not installed."""
    binary = required_program("redis-server")
    address, port = bridge_address(), free_port()
    log = (directory / "log").open("w")
    process = subprocess.Popen(
        [binary, "--bind", address, "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(directory), *options],
        stdout=log, stderr=log,
    )  # fmt: skip

    def answers() -> bool:
        try:
            return redis_command(address, port, ("PING",)).startswith(("+PONG", "-NOAUTH"))
        except OSError:
            return False

    try:
        wait_until(answers, f"redis on {address}:{port}")
        yield address, port
    finally:
        stop(process)
        log.close()

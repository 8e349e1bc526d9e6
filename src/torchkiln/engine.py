"""What the Docker engine and its plugins say about themselves (docker SDK, imported lazily)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln.hostfacts import run_probe

# Where the NVIDIA Container Toolkit writes CDI specs (nvidia-ctk cdi generate --output=…).
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


@dataclass
class EngineFacts:
    """The engine's answers; `error` is set when the engine could not be reached."""

    error: str = ""
    server_version: str = ""
    runtimes: list[str] = field(default_factory=list)
    cdi_devices: list[str] = field(default_factory=list)
    root_dir: str = ""
    free_bytes: int | None = None
    compose_version: str = ""
    compose_v1: str = ""
    buildx_version: str = ""
    cpus: int = 0
    memory_bytes: int = 0
    swarm: dict = field(default_factory=dict)  # docker info's Swarm section

    @property
    def nvidia(self) -> bool:
        """Tell whether containers can get NVIDIA GPUs (runtime or CDI)."""
        return "nvidia" in self.runtimes or bool(self.cdi_devices)


def engine_info() -> EngineFacts:
    """Ask the engine for its version, runtimes, CDI devices, root dir and free disk."""
    facts = EngineFacts()
    try:
        import docker
        from docker.errors import DockerException

        try:
            host = context_host()
        except MissingContext as missing:
            facts.error = (
                f"Docker context '{missing}' (DOCKER_CONTEXT) does not exist; docker context ls "
                f"lists them: unset DOCKER_CONTEXT or name one of those"
            )
            return facts
        client = (
            docker.DockerClient(base_url=host, timeout=10) if host else docker.from_env(timeout=10)
        )
        info = client.info()
    except DockerException as error:
        facts.error = _short(str(error))
        return facts
    except Exception as error:  # the SDK lets requests/urllib3 errors through
        facts.error = _short(f"{type(error).__name__}: {error}")
        return facts
    facts.server_version = str(info.get("ServerVersion", ""))
    facts.cpus = int(info.get("NCPU") or 0)
    facts.memory_bytes = int(info.get("MemTotal") or 0)
    facts.runtimes = sorted(info.get("Runtimes") or {})
    facts.root_dir = str(info.get("DockerRootDir", ""))
    facts.swarm = dict(info.get("Swarm") or {})
    facts.cdi_devices = [
        device.get("ID", "") if isinstance(device, dict) else str(device)
        for device in info.get("DiscoveredDevices") or []
        if "nvidia" in str(device)
    ] or _cdi_files()
    facts.free_bytes = _free_bytes(facts.root_dir)
    return facts


def context_host() -> str:
    """Name the engine endpoint of the current Docker context ('' when DOCKER_HOST decides).

    The CLI, and so Compose, follow `docker context use` and DOCKER_CONTEXT; the SDK reads only
    DOCKER_HOST, so without this the checks would look at another engine than the build uses.
    """
    if os.environ.get("DOCKER_HOST"):
        return ""
    code, out = run_probe(
        ["docker", "context", "inspect", "--format", "{{.Endpoints.docker.Host}}"]
    )
    if code != 0 and os.environ.get("DOCKER_CONTEXT"):
        raise MissingContext(os.environ["DOCKER_CONTEXT"])
    return out.strip() if code == 0 else ""


class MissingContext(Exception):
    """DOCKER_CONTEXT names a context the CLI does not know."""


def plugin_versions(facts: EngineFacts) -> EngineFacts:
    """Add the Compose and buildx plugin versions (and a stray Compose v1) to the facts."""
    code, out = run_probe(["docker", "compose", "version", "--short"])
    facts.compose_version = out.strip().removeprefix("v") if code == 0 else ""
    if shutil.which("docker-compose"):
        code, out = run_probe(["docker-compose", "version", "--short"])
        if code == 0 and out.strip().startswith("1."):
            facts.compose_v1 = out.strip()
    code, out = run_probe(["docker", "buildx", "version"])
    match = re.search(r"v?(\d+\.\d+\.\d+)", out) if code == 0 else None
    facts.buildx_version = match.group(1) if match else ""
    return facts


def image_reachable(image: str, timeout: float = 20) -> str:
    """Say why a base image can be neither found locally nor resolved in its registry, '' when
    it can (a local image, or a manifest the registry answers for)."""
    code, _ = run_probe(["docker", "image", "inspect", "--format", "{{.Id}}", image])
    if code == 0:
        return ""
    try:
        result = subprocess.run(
            ["docker", "buildx", "imagetools", "inspect", image],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError:
        return "docker is not installed"
    except subprocess.TimeoutExpired:
        return f"its registry did not answer within {timeout:.0f} s"
    if result.returncode == 0:
        return ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return _short(lines[-1] if lines else f"exit {result.returncode}")


def nvidia_runtime_present() -> tuple[bool, str]:
    """Tell whether GPUs can reach containers; the text says how that was decided."""
    facts = engine_info()
    if not facts.error:
        return facts.nvidia, "the engine lists no nvidia runtime or CDI device"
    found = shutil.which("nvidia-container-runtime") or _cdi_files()
    return bool(found), "the engine is unreachable and no nvidia-container-runtime was found"


def _cdi_files() -> list[str]:
    found: list[str] = []
    for directory in CDI_DIRS:
        path = Path(directory)
        if path.is_dir():
            found += [str(spec) for spec in sorted(path.glob("*nvidia*"))]
    return found


def _free_bytes(root_dir: str) -> int | None:
    # Only meaningful when the engine is local; a remote engine's root is not on this disk.
    if not root_dir or not os.path.isdir(root_dir):
        return None
    return shutil.disk_usage(root_dir).free


def _short(message: str) -> str:
    return " ".join(message.split())[:240]

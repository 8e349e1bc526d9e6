"""Command lines that run the in-image checks (smoke, bench) in a service's image via Compose."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchkiln import settings
from torchkiln.errors import UserError


def split_service(args: Sequence[str], default: str = "train") -> tuple[str, list[str]]:
    """Take `--service S` (or `--service=S`) out of the arguments; the rest pass through."""
    service, rest = default, []
    items = iter(args)
    for item in items:
        if item == "--service":
            service = next(items, "")
        elif item.startswith("--service="):
            service = item.split("=", 1)[1]
        else:
            rest.append(item)
    if service not in settings.SERVICES:
        raise UserError(
            f"service '{service}' does not exist; choose one of {', '.join(settings.SERVICES)}"
        )
    return service, rest


def module_command(module: str, service: str, args: Sequence[str]) -> list[str]:
    """Run `python -m torchkiln.<module>` once in a fresh container of the service's image."""
    return [
        "docker", "compose", "run", "--rm", "--no-deps", "-T", service,
        "python", "-m", f"torchkiln.{module}", *args,
    ]  # fmt: skip


def expectations(labels: Mapping[str, str], args: Sequence[str]) -> list[str]:
    """Turn an image's torchkiln labels into smoke's --expect-* flags the user did not give."""
    added: list[str] = []
    torch = labels.get("io.torchkiln.pytorch-version", "")
    if torch and "--expect-torch" not in args:
        added += ["--expect-torch", torch]
    cca = labels.get("io.torchkiln.cca", "")
    if cca and compiled_for_cca(labels) and "--expect-cca" not in args:
        added += ["--expect-cca", cca]
    return added


def compiled_for_cca(labels: Mapping[str, str]) -> bool:
    """Tell whether the image holds code compiled here for its CCA label: torch (source), or
    torchvision/torchaudio (torch-wheel), or an extension in any mode. An image of official
    wheels alone covers their own list of archs, which the CCA does not describe."""
    mode = labels.get("io.torchkiln.build-mode", "")
    return mode in ("source", "torch-wheel") or bool(
        labels.get("io.torchkiln.extensions", "").strip()
    )


def image_labels(root: Path, service: str) -> tuple[str, dict[str, str] | None]:
    """Name the service's image and read its labels; None when the image is not built."""
    listed = subprocess.run(
        ["docker", "compose", "config", "--images", service],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if listed.returncode != 0:
        raise UserError(f"docker compose config failed: {listed.stderr.strip()[:300]}")
    image = listed.stdout.strip()
    inspected = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if inspected.returncode != 0:
        return image, None
    return image, json.loads(inspected.stdout or "null") or {}


def require_built(root: Path, service: str) -> str:
    """Refuse a service whose image is not built (Compose would start an unchecked build)."""
    image, labels = image_labels(root, service)
    if labels is None:
        raise UserError(
            f"image {image} of {service} is not built; run invoke build --service {service}"
        )
    return image


def cpu_route(service: str, args: Sequence[str], gpu_problem: str) -> str:
    """What to say when the GPU check failed where no GPU reaches containers (`gpu_problem`
    says why; '' when one does): the command that checks the image on the CPU. '' when it
    was asked for already."""
    if not gpu_problem or "--allow-cpu" in args:
        return ""
    command = shlex.join(["nox", "-s", "smoke", "--", "--service", service, "--allow-cpu", *args])
    return (
        f"no GPU reaches {service}'s containers on this machine ({gpu_problem}), so the CUDA "
        f"checks cannot pass here; check the image on the CPU: {command}"
    )


def gpu_problem(root: Path) -> str:
    """Why no GPU reaches the services' containers here ('' when one does): no NVIDIA runtime,
    or the CPU override in COMPOSE_FILE (.env, or the environment's)."""
    import os

    from torchkiln import engine, envfile

    with_runtime, how = engine.nvidia_runtime_present()
    if not with_runtime:
        return how
    try:
        dotenv = envfile.read(envfile.path(root))
    except UserError:
        dotenv = {}
    compose_file = settings.layered(os.environ, dotenv).get("COMPOSE_FILE", "")
    return "COMPOSE_FILE has compose/cpu.yaml" if "cpu.yaml" in compose_file else ""

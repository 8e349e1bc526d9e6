"""Command lines that run the in-image checks (smoke, bench) in a service's image via Compose."""

from __future__ import annotations

from collections.abc import Sequence

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

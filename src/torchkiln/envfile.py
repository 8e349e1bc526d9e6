"""Reading and writing `.env`: parse errors as file:line, atomic writes, timestamped backups."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from torchkiln.errors import UserError


def parse(text: str, path: Path) -> dict[str, str | None]:
    """Parse .env text with python-dotenv; refuse the first line it cannot read."""
    from dotenv.main import DotEnv
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            shown = binding.original.string.strip()
            raise UserError(
                f"{path}:{line}: cannot read '{shown}'; write NAME=value (quote values with "
                f"spaces), or run invoke env --force to rewrite .env"
            )
    values = DotEnv(dotenv_path=None, stream=io.StringIO(text), interpolate=True).dict()
    return dict(values)


def read(path: Path) -> dict[str, str | None]:
    """Read a .env file; an absent file is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason}); fix or remove it") from None
    return parse(text, path)


def backup_name(path: Path, now: float | None = None) -> Path:
    """Name a free backup path such as .env.20261126-031000 beside the file."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    candidate = path.with_name(f"{path.name}.{stamp}")
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{stamp}-{counter}")
        counter += 1
    return candidate


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file through a temporary sibling and a rename, so it is never half-written."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

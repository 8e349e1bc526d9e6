"""Glue shared by the invoke tasks: user errors as one-line exits, and the settings in force."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from torchkiln import envfile, settings
from torchkiln.errors import UserError


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError into invoke's Exit: one line on stderr, exit 1, no traceback."""
    from invoke.exceptions import Exit

    try:
        yield
    except UserError as error:
        raise Exit(f"error: {error}", code=1) from None


def current_settings(root: Path, flags: Mapping[str, str | None]) -> dict[str, str]:
    """Resolve the settings by precedence: flags > process environment > .env > defaults."""
    given = {name: value for name, value in flags.items() if value is not None}
    return settings.resolve(given, os.environ, envfile.read(root / ".env"))

"""Glue shared by the invoke tasks: user errors as one-line exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torchkiln.errors import UserError


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError into invoke's Exit: one line on stderr, exit 1, no traceback."""
    from invoke.exceptions import Exit

    try:
        yield
    except UserError as error:
        raise Exit(f"error: {error}", code=1) from None

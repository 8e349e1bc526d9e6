"""Glue shared by the invoke tasks: user errors and interruptions as one-line exits, and colour
only where a person reads it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from torchkiln.errors import UserError


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError into invoke's Exit (one line on stderr, exit 1, no traceback), and an
    interrupted build into exit 130 (Ctrl-C) or 143 (SIGTERM) with a line saying what changed."""
    from invoke.exceptions import Exit

    from torchkiln.runner import Interrupted

    try:
        yield
    except UserError as error:
        from torchkiln.urls import mask_text  # no URL password in any message, whoever wrote it

        raise Exit(f"error: {mask_text(str(error))}", code=1) from None
    except Interrupted as stopped:
        raise Exit(
            f"interrupted ({stopped}); nothing was changed: the image and dist/ are as before, "
            f"and invoke build again resumes from BuildKit's cache",
            code=stopped.exit_code,
        ) from None
    except KeyboardInterrupt:
        raise Exit("interrupted (SIGINT); nothing was changed", code=130) from None


def colour_wanted(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Tell whether to colour what goes to a stream: on a terminal, unless NO_COLOR is set
    (no-color.org: any non-empty value) or TERM says the terminal is dumb."""
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def echo_format(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> str:
    """invoke's format for the commands it echoes (`invoke --dry …`): its bold white on a
    terminal, the bare command anywhere else, so no escape codes reach files and pipes."""
    wanted = colour_wanted(stream or sys.stdout, os.environ if environ is None else environ)
    return "\033[1;37m{command}\033[0m" if wanted else "{command}"

"""Glue shared by the invoke tasks: user errors and interruptions as one-line exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
        raise Exit(f"error: {error}", code=1) from None
    except Interrupted as stopped:
        raise Exit(
            f"interrupted ({stopped}); nothing was changed: the image and dist/ are as before, "
            f"and invoke build again resumes from BuildKit's cache",
            code=stopped.exit_code,
        ) from None
    except KeyboardInterrupt:
        raise Exit("interrupted (SIGINT); nothing was changed", code=130) from None

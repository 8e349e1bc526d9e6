"""Running the long commands (builds, exports): output streamed and kept for the summary, Ctrl-C
and SIGTERM passed on to the build and reported as an interruption, one build per checkout."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchkiln.errors import UserError

# How long a build may take to stop after it was asked to, before it is killed.
STOP_GRACE_S = 20


class Interrupted(Exception):
    """The user stopped a command with Ctrl-C (SIGINT) or SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


@dataclass
class Streamed:
    """What a streamed command did."""

    code: int
    output: str

    @property
    def failed(self) -> bool:
        """Tell whether it exited non-zero."""
        return self.code != 0


def stream(command: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> Streamed:
    """Run a command in its own session, echo its output and keep it; pass signals on.

    Its own session: Ctrl-C at a terminal reaches this process only, which asks the build to
    stop (SIGINT, as docker compose expects) and waits for it, so the same happens whether the
    signal came from the terminal, from `kill -INT`, or as SIGTERM. stdin is not passed on.
    """
    received: list[int] = []
    proc = subprocess.Popen(
        list(command),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    chunks: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            chunks.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        try:
            code = proc.wait(timeout=STOP_GRACE_S if received else None)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if received:
        raise Interrupted(received[0])
    return Streamed(code, "".join(chunks))


@contextlib.contextmanager
def checkout_lock(root: Path, what: str) -> Iterator[None]:
    """Hold the checkout's lock for a build or export; refuse when another one holds it."""
    state = root / ".torchkiln"
    try:
        state.mkdir(exist_ok=True)
        handle = (state / "lock").open("a+", encoding="utf-8")
    except OSError as error:
        raise UserError(
            f"cannot write {state} ({error.strerror}); make the checkout writable for you"
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(
                f"another invoke build or wheels is running in this checkout ({holder}); wait "
                f"for it to finish, or stop it, then run invoke {what} again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"invoke {what}, pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)

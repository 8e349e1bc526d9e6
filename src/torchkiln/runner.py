"""Running the long commands (builds, exports): output streamed and kept for the summary (and
in full in a log file), the compile steps' ninja lines condensed to one progress line, Ctrl-C
and SIGTERM passed on to the build and reported as an interruption, one build per checkout."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

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


def format_duration(seconds: float) -> str:
    """Say a duration as a person would: '45 s', '41 min', '3 h 30 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


# BuildKit's plain log: a step's header names its stage; each line of its output carries the
# seconds since the step started; ninja (CMake's generator) prints "[done/total] what" per edge,
# indented when it comes through `pip wheel -v`.
_STEP_RUN = re.compile(r"^#(\d+) \[(?:\S+ )?([a-z0-9_.-]+) +\d+/\d+\] RUN\b")
_NINJA = re.compile(r"^#(\d+) ([\d.]+) +\[(\d+)/(\d+)\] ")
_STEP_END = re.compile(r"^#(\d+) (?:DONE [\d.]+s|ERROR\b|CANCELED\b)")
# What a person calls each compile stage of docker/Dockerfile.
STAGE_LABELS = {
    "torch-build": "torch",
    "vision-build": "torchvision",
    "audio-build": "torchaudio",
    "extensions-build": "extensions",
    "magma-build": "magma",
}
# Without a terminal, a progress line is printed each time a step passes another tenth, or after
# this many seconds, so a log file shows the compile moving without holding every ninja line.
PLAIN_EVERY_S = 300


@dataclass
class StepProgress:
    """How far one compile step is, from its ninja lines."""

    label: str
    done: int = 0
    total: int = 0
    elapsed: float = 0.0  # the step's own clock (BuildKit's seconds since it started)
    run_started: float = 0.0  # that clock at the first line of the current ninja run
    run_first_done: int = 0

    def text(self) -> str:
        """'torch: 1234/7850 (16 %), 41 min elapsed, about 3 h 30 min left'."""
        percent = 100 * self.done // self.total if self.total else 0
        shown = f"{self.label}: {self.done}/{self.total} ({percent} %), "
        shown += f"{format_duration(self.elapsed)} elapsed"
        rate_done = self.done - self.run_first_done
        rate_time = self.elapsed - self.run_started
        # The rate of this ninja run so far; the first few edges (configure, small files) say
        # little, so nothing is promised before there is something to go on.
        if rate_done >= 3 and rate_time >= 5 and self.done < self.total:
            left = (self.total - self.done) * rate_time / rate_done
            shown += f", about {format_duration(left)} left"
        return shown


@dataclass
class Progress:
    """Condense the ninja lines of the compile steps in a BuildKit plain log into one line."""

    labels: dict[str, str] = field(default_factory=dict)
    steps: dict[str, StepProgress] = field(default_factory=dict)

    def feed(self, line: str) -> bool:
        """Take one log line; True when it is a progress line (shown condensed, not as is)."""
        header = _STEP_RUN.match(line)
        if header:
            self.labels[header[1]] = STAGE_LABELS.get(header[2], header[2])
            return False
        ended = _STEP_END.match(line)
        if ended:
            self.steps.pop(ended[1], None)
            return False
        ninja = _NINJA.match(line)
        if not ninja:
            return False
        step, elapsed, done, total = ninja[1], float(ninja[2]), int(ninja[3]), int(ninja[4])
        state = self.steps.get(step)
        if state is None or done < state.done:  # a new ninja run in the step starts at 1 again
            state = StepProgress(self.labels.get(step, f"step {step}"))
            state.run_started, state.run_first_done = elapsed, done
            self.steps[step] = state
        state.done, state.total, state.elapsed = done, total, elapsed
        return True

    def text(self) -> str:
        """The progress of every compile step that is running ('' when none is)."""
        return "; ".join(state.text() for state in self.steps.values())

    def tenths(self) -> tuple[tuple[str, int], ...]:
        """Which tenth each running step has reached (a plain log prints a line per tenth)."""
        return tuple(
            (step, 10 * state.done // state.total if state.total else 0)
            for step, state in self.steps.items()
        )


class ProgressDisplay:
    """Show output lines and the progress line: redrawn in place on a terminal, printed now and
    then as a line of its own elsewhere (files and pipes get no carriage returns)."""

    def __init__(self, out: TextIO, terminal: bool) -> None:
        self.out, self.terminal = out, terminal
        self.progress = Progress()
        self.shown = ""  # the progress line on the terminal now
        self.last_tenths: tuple[tuple[str, int], ...] = ()
        self.last_plain = 0.0

    def line(self, line: str, now: float) -> None:
        """Show one output line, or fold it into the progress line."""
        folded = self.progress.feed(line)
        if self.terminal:
            self._clear()
            if not folded:
                self.out.write(line)
            self._draw()
            return
        if not folded:
            self.out.write(line)
        else:
            tenths = self.progress.tenths()
            if tenths != self.last_tenths or now - self.last_plain >= PLAIN_EVERY_S:
                self.out.write(f"progress: {self.progress.text()}\n")
                self.last_tenths, self.last_plain = tenths, now
        self.out.flush()

    def close(self) -> None:
        """Leave the terminal at the start of a clean line."""
        self._clear()
        self.out.flush()

    def _clear(self) -> None:
        if self.shown:
            self.out.write("\r" + " " * len(self.shown) + "\r")
            self.shown = ""

    def _draw(self) -> None:
        text = self.progress.text()
        if text:
            self.shown = f"progress: {text}"[: _columns()]
            self.out.write(self.shown + "\r")
        self.out.flush()


def _columns() -> int:
    # A progress line longer than the terminal would wrap, and \r could not take it back.
    with contextlib.suppress(OSError):
        return os.get_terminal_size().columns - 1
    return 200


def stream(
    command: Sequence[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Streamed:
    """Run a command in its own session, echo its output and keep it; pass signals on.

    Its own session: Ctrl-C at a terminal reaches this process only, which asks the build to
    stop (SIGINT, as docker compose expects) and waits for it, so the same happens whether the
    signal came from the terminal, from `kill -INT`, or as SIGTERM. stdin is not passed on.
    The compile steps' ninja lines are condensed to a progress line; `log` gets every line,
    as it comes, so it is complete also when the build fails or is stopped.
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
    display = ProgressDisplay(sys.stdout, _is_terminal(sys.stdout))
    log_file = _open_log(log)
    try:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            chunks.append(line)
            display.line(line, time.monotonic())
            if log_file:
                log_file.write(line)
        display.close()
        try:
            code = proc.wait(timeout=STOP_GRACE_S if received else None)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    finally:
        if log_file:
            log_file.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if received:
        raise Interrupted(received[0])
    return Streamed(code, "".join(chunks))


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _open_log(log: Path | None) -> TextIO | None:
    # The build's output is on the terminal already; the log file is a convenience.
    if log is None:
        return None
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        return log.open("w", encoding="utf-8", errors="replace")
    except OSError:
        return None


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

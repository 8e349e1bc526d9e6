"""The compile steps' progress line, from ninja's [N/M] lines in BuildKit's plain log, and colour
only on a terminal: pure functions and an in-memory stream."""

from __future__ import annotations

import io

import pytest

from torchkiln import runner, taskkit


def ninja_log(step: int, seconds: list[float], total: int, stage: str = "torch-build") -> list[str]:
    lines = [f"#{step} [train {stage} 1/1] RUN --mount=type=cache build-wheel.sh\n"]
    lines += [
        f"#{step} {second:.3f}   [{done}/{total}] Building CXX object x{done}.o\n"
        for done, second in enumerate(seconds, start=1)
    ]
    return lines


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (45, "45 s"),
        (41 * 60, "41 min"),
        (3 * 3600 + 30 * 60, "3 h 30 min"),
        (2 * 3600, "2 h"),
    ],
)
def test_durations_read_as_a_person_says_them(seconds: float, text: str) -> None:
    assert runner.format_duration(seconds) == text


def test_the_progress_line_names_the_stage_the_count_and_what_is_left() -> None:
    progress = runner.Progress()
    # 1234 of 7850 edges after 41 min, at a steady rate from the start of the ninja run.
    lines = [
        "#12 [train torch-build 1/1] RUN build-wheel.sh\n",
        "#12 10.000 [1/7850] Building CXX object a.o\n",
        f"#12 {41 * 60:.3f} [1234/7850] Building CUDA object b.o\n",
    ]
    assert [progress.feed(line) for line in lines] == [False, True, True]
    text = progress.text()
    assert text.startswith("torch: 1234/7850 (15 %), 41 min elapsed, about ")
    hours_left = (7850 - 1234) * (41 * 60 - 10) / 1233 / 3600
    assert f"about {runner.format_duration(hours_left * 3600)} left" in text


def test_no_promise_before_there_is_a_rate_and_none_after_the_step() -> None:
    progress = runner.Progress()
    for line in ninja_log(7, [1.0, 1.2], 500, "extensions-build"):
        progress.feed(line)
    assert progress.text() == "extensions: 2/500 (0 %), 1 s elapsed"
    progress.feed("#7 DONE 99.0s\n")
    assert progress.text() == ""


def test_a_new_ninja_run_in_the_step_starts_counting_again() -> None:
    progress = runner.Progress()
    for line in ninja_log(3, [float(s) for s in range(1, 21)], 20, "vision-build"):
        progress.feed(line)
    progress.feed("#3 30.000 [1/400] Building CXX object y.o\n")
    assert progress.text().startswith("torchvision: 1/400 (0 %), 30 s elapsed")


def test_a_plain_log_gets_a_line_per_tenth_and_every_other_line_as_is() -> None:
    out = io.StringIO()
    display = runner.ProgressDisplay(out, terminal=False)
    lines = ninja_log(12, [float(second) for second in range(1, 101)], 100)
    lines.insert(50, "#12 50.500 warning: something to read\n")
    for now, line in enumerate(lines):
        display.line(line, float(now))
    display.close()
    shown = out.getvalue().splitlines()
    progress = [line for line in shown if line.startswith("progress: ")]
    assert len(progress) == 11  # 1 %, then each tenth up to 100 %
    assert progress[-1].startswith("progress: torch: 100/100 (100 %)")
    assert "#12 50.500 warning: something to read" in shown
    assert not any("[50/100]" in line for line in shown), "ninja lines are condensed"
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    out = io.StringIO()
    display = runner.ProgressDisplay(out, terminal=True)
    for now, line in enumerate(ninja_log(12, [1.0, 2.0, 3.0], 3)):
        display.line(line, float(now))
    display.line("#12 4.000 a line to read\n", 4.0)
    display.close()
    text = out.getvalue()
    assert "progress: torch: 3/3 (100 %)" in text
    # The line to read is on a line of its own, after the progress line was wiped.
    assert "\r#12 4.000 a line to read\n" in text.replace(" " * 10, "")
    assert text.endswith("\r"), "close leaves the cursor at the start of a clean line"


def test_the_whole_output_goes_to_the_log_file(tmp_path) -> None:
    log = tmp_path / "state" / "build.log"
    script = "; ".join(f"echo '#5 {i}.0 [{i}/3] cc x{i}.o'" for i in range(1, 4))
    result = runner.stream(["sh", "-c", script + "; echo done"], tmp_path, log=log)
    assert result.code == 0
    assert log.read_text() == result.output
    assert "[2/3] cc x2.o" in log.read_text() and log.read_text().endswith("done\n")


class FakeStream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.mark.parametrize(
    ("terminal", "environ", "coloured"),
    [
        (True, {}, True),
        (False, {}, False),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),
        (True, {"TERM": "dumb"}, False),
    ],
    ids=["terminal", "pipe", "no-color", "empty-no-color", "dumb"],
)
def test_colour_only_on_a_terminal_unless_no_color(terminal, environ, coloured) -> None:
    shown = taskkit.echo_format(FakeStream(terminal), environ)
    assert ("\x1b" in shown) is coloured
    assert shown.format(command="docker compose build").endswith(
        "docker compose build" + ("\x1b[0m" if coloured else "")
    )

"""Task wiring: the Compose commands up/down/shell/logs run, checked with invoke's MockContext."""

import sys
from pathlib import Path

import pytest
from invoke import Exit, MockContext, Result

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tasks


def ran(task, *args, **kwargs) -> list[str]:
    context = MockContext(run=Result(), repeat=True)
    task(context, *args, **kwargs)
    return [call.args[0] for call in context.run.call_args_list]


@pytest.mark.parametrize(
    ("task", "kwargs", "command"),
    [
        (tasks.up, {}, "docker compose up --detach train"),
        (tasks.up, {"service": "ngc"}, "docker compose up --detach ngc"),
        (tasks.down, {}, "docker compose down"),
        (tasks.down, {"volumes": True}, "docker compose down --volumes"),
        (tasks.shell, {"service": "full"}, "docker compose exec full zsh"),
        (tasks.logs, {"follow": True}, "docker compose logs --follow train"),
    ],
    ids=["up", "up-ngc", "down-keeps-volumes", "down-volumes", "shell-full", "logs-follow"],
)
def test_compose_wrappers(task, kwargs, command):
    assert ran(task, **kwargs) == [command]


def test_shell_gets_a_terminal():
    context = MockContext(run=Result(), repeat=True)
    tasks.shell(context)
    assert context.run.call_args.kwargs.get("pty") is True


def test_unknown_service_is_one_line():
    with pytest.raises(Exit) as caught:
        ran(tasks.up, service="gpu")
    assert "service 'gpu'" in str(caught.value.message)

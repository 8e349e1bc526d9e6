"""Task wiring: the Compose commands up/down/shell/logs run, checked with invoke's MockContext."""

import sys
from pathlib import Path

import pytest
from invoke import Exit, MockContext, Result

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tasks


@pytest.fixture(autouse=True)
def built_images(monkeypatch):
    """Every image counts as built, and the checkout as sound (.env present, the shell's Compose
    variables its own, no other checkout in its project), unless a test says otherwise."""
    from torchkiln import checkout, incontainer

    monkeypatch.setattr(incontainer, "image_labels", lambda root, service: (f"img/{service}", {}))
    monkeypatch.setattr(checkout, "guard", lambda root, environ=None, action="": "demo")


def ran(task, *args, **kwargs) -> list[str]:
    context = MockContext(run=Result(), repeat=True)
    task(context, *args, **kwargs)
    return [call.args[0] for call in context.run.call_args_list]


@pytest.mark.parametrize(
    ("task", "kwargs", "command"),
    [
        (tasks.up, {}, "docker compose up --detach --no-build train"),
        (tasks.up, {"service": "ngc"}, "docker compose up --detach --no-build ngc"),
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


@pytest.mark.parametrize("task", [tasks.up, tasks.shell, tasks.logs], ids=["up", "shell", "logs"])
def test_an_unbuilt_image_is_refused_not_built(task, monkeypatch):
    from torchkiln import incontainer

    monkeypatch.setattr(incontainer, "image_labels", lambda root, service: ("img/full", None))
    with pytest.raises(Exit) as caught:
        ran(task, service="full")
    assert caught.value.message == (
        "error: image img/full of full is not built; run invoke build --service full"
    )


@pytest.mark.parametrize("task", [tasks.up, tasks.down, tasks.shell], ids=["up", "down", "shell"])
def test_a_checkout_the_guard_refuses_runs_no_compose_command(task, monkeypatch):
    from torchkiln import checkout
    from torchkiln.errors import UserError

    def refuse(root, environ=None, action=""):
        raise UserError(f"{action}: /x/.env does not exist; run invoke env first")

    monkeypatch.setattr(checkout, "guard", refuse)
    context = MockContext(run=Result(), repeat=True)
    with pytest.raises(Exit) as caught:
        task(context)
    assert "run invoke env first" in caught.value.message
    assert context.run.call_args_list == []


def test_logs_that_are_empty_say_why(capsys):
    ran(tasks.logs)
    assert "train has logged nothing" in capsys.readouterr().out


TASKS = ["env", "doctor", "build", "wheels", "up", "down", "shell", "logs", "clean"]


@pytest.mark.parametrize("name", TASKS)
def test_every_task_has_help_and_dash_h_is_help(name):
    import re
    import subprocess

    root = Path(__file__).resolve().parents[2]
    for args in (["--help", name], [name, "-h"]):
        shown = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=root, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"Usage: inv[oke] [--core-opts] {name}"), shown.stdout
        flags = re.findall(r"^\s+(-\S+)", shown.stdout, re.M)
        assert all(re.fullmatch(r"--[a-z][a-z-]*(\[?=\S+)?", flag) for flag in flags), flags
        assert "--," not in shown.stdout
    import inspect

    task_object = getattr(tasks, name)
    parameters = set(inspect.signature(task_object.body).parameters) - {"c"}
    # every parameter has a help text (doctor has none to document)
    assert set(task_object.help) == parameters

"""A docker command that hangs or answers nonsense is one line, not a traceback, and the
multi-node check's cleanup runs each of its commands even when one before it hung. A stand-in
`docker` on the PATH hangs where the real one would (an engine that does not answer)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from torchkiln import checkout, multinode, stack
from torchkiln.errors import UserError

FAKE = """#!/bin/sh
echo "$*" >> "{log}"
case "$1 $2" in
  "rm -f") sleep 10 ;;
  "run -d") echo "Unable to find image" >&2; exit 125 ;;
  "info --format") {info} ;;
  "node ls") echo abc ;;
  "node inspect") echo "[{{not json" ;;
esac
"""


def fake_docker(tmp_path: Path, monkeypatch, info: str = "echo '{}'") -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "calls"
    script = folder / "docker"
    script.write_text(FAKE.format(log=log, info=info))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")
    monkeypatch.setattr(checkout, "DOCKER_TIMEOUT_S", 1)
    return log


def test_a_hung_container_removal_still_removes_the_network(tmp_path, monkeypatch, capsys):
    log = fake_docker(tmp_path, monkeypatch)
    job = multinode.Job("img", 2, "gloo", run_id="abc")
    passed, text = multinode.run(job)
    assert not passed and text.startswith("FAILED: node 0")
    calls = log.read_text().splitlines()
    assert calls[-2].startswith("rm -f") and calls[-1] == f"network rm {job.network}"
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("warning: docker rm -f did not answer")
    assert "\n" not in warning and "remove it by hand: docker rm -f" in warning


@pytest.mark.parametrize(
    ("info", "said"),
    [
        ("sleep 10", "docker info --format did not answer"),
        ("echo 'Podman info'", "answered what is not their JSON"),
        ("""echo '{"Swarm": {"ControlAvailable": true}}'""", "answered what is not their JSON"),
    ],
    ids=["hangs", "not-json", "nodes-not-json"],
)
def test_the_swarm_question_is_one_line_when_docker_fails(tmp_path, monkeypatch, info, said):
    fake_docker(tmp_path, monkeypatch, info)
    with pytest.raises(UserError, match=said) as raised:
        stack.swarm_here()
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("swarm", "status", "said", "asked"),
    [
        ({"LocalNodeState": "inactive"}, "ok", "not in a swarm (inactive)", []),
        (
            {"LocalNodeState": "active", "ControlAvailable": True, "Nodes": 1},
            "warn",
            "not checked: docker info or docker node inspect answered what is not their JSON",
            ["node ls -q", "node inspect abc"],
        ),
    ],
    ids=["no-swarm", "nodes-unreadable"],
)
def test_doctors_swarm_row_reads_the_engines_facts_and_never_fails(
    tmp_path, monkeypatch, swarm, status, said, asked
):
    log = fake_docker(tmp_path, monkeypatch, "exit 1")
    found, detail, _ = stack.doctor_row(swarm)
    assert (found, detail.startswith(said)) == (status, True)
    calls = log.read_text().splitlines() if log.exists() else []
    assert calls == asked  # no second docker info: the SDK's answer is used

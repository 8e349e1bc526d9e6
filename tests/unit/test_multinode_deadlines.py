"""The multi-node check's time limits: one rule (inimage.multinode.node_limit/job_deadline)
that ends every node before any host gives up on it, and a node that stops torchrun stops its
ranks with it (a process group of their own), on real processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from torchkiln.inimage import multinode as inimage

# A stand-in for torchrun: it starts a "rank" that outlives it unless its group is killed.
TORCHRUN = """
import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(rank.pid))
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("timeout", [5, 60, 600])
def test_every_node_ends_before_its_host_gives_up(timeout):
    waits = 3 * timeout  # the service's addresses, node 0's port, torchrun's rendezvous
    assert inimage.node_limit(timeout) >= waits + timeout  # and the ranks' own work
    assert inimage.job_deadline(timeout) > inimage.node_limit(timeout)


def test_hosts_wait_the_one_job_deadline():
    import inspect

    from torchkiln import multinode, stack

    for function in (multinode.wait_all, stack.check, inimage.run_local):
        assert "job_deadline(" in inspect.getsource(function), function.__name__


def test_a_stopped_torchrun_takes_its_ranks_with_it(tmp_path):
    pid_file = tmp_path / "rank.pid"
    started = time.monotonic()
    code = inimage.run_group([sys.executable, "-c", TORCHRUN, str(pid_file)], dict(os.environ), 2)
    assert code is None and time.monotonic() - started < 30
    rank = int(pid_file.read_text())
    for _ in range(50):
        if not alive(rank):
            break
        time.sleep(0.1)
    assert not alive(rank), "the rank outlived its torchrun"


def test_a_node_past_its_limit_names_the_real_limit(monkeypatch, capsys):
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(inimage, "torchrun_command", lambda *args: sleeper)
    place = inimage.Place(0, "127.0.0.1", inimage.free_port())
    code = inimage.run_node(2, place, "gloo", 5, "t", end=time.monotonic() + 1)
    assert code == 1
    assert "node 0: the job ran past 80 s (--timeout 5)" in capsys.readouterr().out

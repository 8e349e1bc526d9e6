"""The team's compile cache, host side: the setting, the summary, doctor's probe and row."""

from __future__ import annotations

import socket
import threading

import pytest

from torchkiln import (
    buildplan,
    buildsummary,
    compose,
    hostfacts,
    settingchecks,
    settings,
)
from torchkiln.errors import UserError


@pytest.mark.parametrize(
    "url",
    ["redis://10.0.0.5:6379", "redis://:pw@cache:6379/2", "redis://h:1|read-only",
     "http://cache.example.com:8080/ccache|read-only"],
)  # fmt: skip
def test_accepted_urls(url: str) -> None:
    assert settings.resolve({"CCACHE_REMOTE": f" {url} "})["CCACHE_REMOTE"] == url


@pytest.mark.parametrize("url", ["cache:6379", "ftp://h/x", "redis://h:1 |read-only"])
def test_refused_urls_name_the_form(url: str) -> None:
    with pytest.raises(UserError, match=r"CCACHE_REMOTE .* redis://HOST:6379"):
        settings.resolve({"CCACHE_REMOTE": url})


def test_the_url_is_a_secret_of_the_build_never_an_arg() -> None:
    values = settings.resolve({"CCACHE_REMOTE": "redis://:pw@h:1"})
    assert "CCACHE_REMOTE" not in buildplan.build_arg_values("train", values)
    # In the form ccache reads: it takes redis://:PW@ for "no password", redis://PW@ for PW.
    assert compose.build_secrets(values)["CCACHE_REMOTE"] == "redis://pw@h:1"
    command = compose.wheels_command("train", {}, {}, "", "/tmp/out")
    assert command[command.index("id=ccache_remote,env=CCACHE_REMOTE") - 1] == "--secret"


def test_the_summary_tells_remote_hits_and_failures_apart() -> None:
    log = (
        "torchkiln-ccache: pytorch hits=3 misses=1 remote_hits=2 remote_errors=0\n"
        "torchkiln-ccache: vision hits=1 misses=0 remote_hits=1 remote_errors=0\n"
    )
    assert buildsummary.ccache_rate(log) == (
        "80% (4 hits, 1 misses); 1 hits local, 3 from the team's remote cache"
    )
    down = "torchkiln-ccache: pytorch hits=0 misses=4 remote_hits=0 remote_errors=4\n"
    assert "WARNING the remote cache failed 4 times" in buildsummary.ccache_rate(down)
    assert buildsummary.ccache_rate("torchkiln-ccache: hits=1 misses=1\n").endswith("1 misses)")


def serve_once(answer: bytes) -> int:
    """A one-connection server on loopback that answers anything with `answer`."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def reply() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(64)
            connection.sendall(answer)
        server.close()

    threading.Thread(target=reply, daemon=True).start()
    return server.getsockname()[1]


def test_the_probe_knows_redis_from_the_rest_and_from_nothing() -> None:
    assert hostfacts.cache_server_problem("") == ""
    assert hostfacts.cache_server_problem(f"redis://127.0.0.1:{serve_once(b'+PONG')}") == ""
    assert hostfacts.cache_server_problem(f"redis://127.0.0.1:{serve_once(b'-NOAUTH x')}") == ""
    odd = hostfacts.cache_server_problem(f"redis://127.0.0.1:{serve_once(b'HTTP/1.1 400')}")
    assert "answered, but not as Redis" in odd
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert "does not answer" in hostfacts.cache_server_problem(
        f"redis://127.0.0.1:{port}|read-only"
    )


def test_doctor_warns_and_never_fails_on_the_cache() -> None:
    assert settingchecks.check_ccache_remote("", "") is None
    row = settingchecks.check_ccache_remote("redis://h:1|read-only", "redis://h:1 does not answer")
    assert row is not None and row.status == "warn" and "read-only" in row.detail
    assert "never 127.0.0.1" in row.fix
    assert settingchecks.check_ccache_remote("redis://h:1", "").status == "ok"

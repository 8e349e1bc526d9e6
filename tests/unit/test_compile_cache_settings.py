"""The team's compile cache and the build farm, host side: the settings, the secrets, the
migration from CCACHE_REMOTE, the summary, doctor's probe and row."""

from __future__ import annotations

import socket
import threading

import pytest

from torchkiln import buildplan, buildsummary, compose, hostfacts, sccache, settingchecks, settings
from torchkiln.errors import UserError


def line(name: str, **counts: object) -> str:
    """A compile step's line as torchkiln.inimage.compilecache prints it."""
    fields = dict.fromkeys(("hits", "misses", "remote_hits", "remote_errors", "uncached"), 0)
    fields.update(local=0, dist=0, dist_errors=0, servers="-", reasons="-")
    fields.update(counts)
    return f"torchkiln-sccache: {name} " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n"


@pytest.mark.parametrize(
    "url",
    ["redis://10.0.0.5:6379", "redis://:pw@cache:6379/2", "redis://h:1|read-only",
     "rediss://u:pw@cache:6380", "memcached://cache:11211",
     "s3://bucket/torch|region=eu-west-1|endpoint=https://minio.example:9000",
     "s3://KEY:SECRET@bucket/prefix", "gs://bucket/prefix", "webdav+https://dav.example/c",
     "http://cache.example.com:8080/ccache|read-only"],
)  # fmt: skip
def test_accepted_urls(url: str) -> None:
    assert settings.resolve({"COMPILE_CACHE": f" {url} "})["COMPILE_CACHE"] == url


@pytest.mark.parametrize(
    "url", ["cache:6379", "ftp://h/x", "redis://h:1 |read-only", "s3://b|regio=x", "tcp://h:1"]
)
def test_refused_urls_name_the_form(url: str) -> None:
    with pytest.raises(UserError, match=r"COMPILE_CACHE .* redis://\[:PASSWORD@\]HOST:6379"):
        settings.resolve({"COMPILE_CACHE": url})


def test_the_url_is_a_secret_of_the_build_never_an_arg() -> None:
    values = settings.resolve({"COMPILE_CACHE": "redis://:p$w@h:1"})
    assert "COMPILE_CACHE" not in buildplan.build_arg_values("train", values)
    assert compose.build_secrets(values)["COMPILE_CACHE"] == "redis://:p%24w@h:1"
    command = compose.wheels_command("train", {}, {}, "", "/tmp/out")
    for secret in ("compile_cache", "build_farm", "build_farm_token"):
        assert command[command.index(f"id={secret},env={secret.upper()}") - 1] == "--secret"


def test_an_old_ccache_remote_is_read_as_compile_cache_with_one_line() -> None:
    values = settings.resolve({"CCACHE_REMOTE": "redis://pw@h:1|read-only"})
    assert compose.build_secrets(values)["COMPILE_CACHE"] == "redis://:pw@h:1|read-only"
    note = sccache.migration_note(values)
    assert note and "COMPILE_CACHE" in note and "\n" not in note
    both = settings.resolve({"CCACHE_REMOTE": "redis://h:1", "COMPILE_CACHE": "redis://g:2"})
    assert sccache.migration_note(both) is None
    assert compose.build_secrets(both)["COMPILE_CACHE"] == "redis://g:2"


def test_the_farm_token_travels_only_with_a_farm(tmp_path) -> None:
    values = settings.resolve({"BUILD_FARM_TOKEN": "tok"})
    assert compose.build_secrets(values)["BUILD_FARM_TOKEN"] == ""
    farm = settings.resolve({"BUILD_FARM": "http://10.0.0.2:10600/"})
    (tmp_path / ".torchkiln" / "farm").mkdir(parents=True)
    (tmp_path / ".torchkiln" / "farm" / "client-token").write_text("written\n")
    secrets = compose.build_secrets(farm, tmp_path)
    assert secrets["BUILD_FARM"] == "http://10.0.0.2:10600"
    assert secrets["BUILD_FARM_TOKEN"] == "written"
    with pytest.raises(UserError, match=r"BUILD_FARM .*token"):
        settings.resolve({"BUILD_FARM": "http://me:tok@10.0.0.2:10600"})


def test_the_summary_tells_remote_hits_and_failures_apart() -> None:
    log = line("pytorch", hits=3, misses=1, remote_hits=2) + line("vision", hits=1, remote_hits=1)
    assert buildsummary.sccache_rate(log) == (
        "80% (4 hits, 1 misses); 1 hits local, 3 from the team's remote cache"
    )
    down = line("pytorch", misses=4, remote_errors=4)
    assert "WARNING the remote cache failed 4 times" in buildsummary.sccache_rate(down)
    assert buildsummary.sccache_rate(line("x", hits=1, misses=1)).endswith("1 misses)")


def test_the_summary_tells_the_farm_and_its_fallbacks() -> None:
    log = line(
        "pytorch", misses=30, local=6, dist=24, servers="172.17.0.3:10501:14,172.17.0.4:10501:10"
    )
    log += line("vision", misses=5, local=5, dist_errors=5, reasons="-save-temps:1", uncached=1)
    said = buildsummary.sccache_rate(log)
    assert (
        "farm: 24 compiled remotely (172.17.0.3:10501 14, 172.17.0.4:10501 10), 11 locally" in said
    )
    assert "WARNING 5 compiles fell back to this machine" in said
    assert said.endswith("did not take them (it stopped answering during the step)")
    log += "torchkiln-sccache-farm: vision NotConnected: http://s:10600/ could not communicate\n"
    log += "torchkiln-sccache-farm: audio NotConnected: http://s:10600/ retry\n"  # no fallback
    assert buildsummary.sccache_rate(log).endswith(
        "(vision: NotConnected: http://s:10600/ could not communicate)"
    )
    assert "1 calls sccache could not cache (-save-temps 1)" in said


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
    assert settingchecks.check_compile_cache("", "") is None
    row = settingchecks.check_compile_cache("redis://h:1|read-only", "redis://h:1 does not answer")
    assert row is not None and row.status == "warn" and "read-only" in row.detail
    assert "never 127.0.0.1" in row.fix
    assert settingchecks.check_compile_cache("redis://h:1", "").status == "ok"
    assert "start the server (docker compose --profile cache up -d compile-cache)" in row.fix
    old = settingchecks.check_compile_cache("redis://h:1", "", "CCACHE_REMOTE")
    assert old is not None and old.detail == "CCACHE_REMOTE answers (read-write)"

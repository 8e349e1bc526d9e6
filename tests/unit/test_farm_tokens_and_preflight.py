"""The build farm's host side: tokens, the scheduler's status, the preflight's one line, the
estimate divided by the farm's cores, the servers' completed counts, BUILD_FARM in .env."""

from __future__ import annotations

import base64
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from torchkiln import farm, settings
from torchkiln.errors import UserError


def test_tokens_are_written_0600_once_and_the_key_is_sccache_dists_form(tmp_path: Path) -> None:
    assert farm.ensure_tokens(tmp_path) == ["jwt-key", "client-token"]
    key = (tmp_path / ".torchkiln" / "farm" / "jwt-key").read_text().strip()
    assert len(base64.urlsafe_b64decode(key + "=")) == 32 and "=" not in key
    for name in ("jwt-key", "client-token"):
        assert (tmp_path / ".torchkiln" / "farm" / name).stat().st_mode & 0o777 == 0o600
    assert farm.ensure_tokens(tmp_path) == []  # never replaced: servers and clients use them
    assert (tmp_path / ".torchkiln" / "farm" / "jwt-key").read_text().strip() == key


def test_no_key_or_token_begins_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 in 64 base64url values begins with '-', which sccache-dist's command line took for an
    # option: the build server failed at every start (a CI run's farm servers restarted for a
    # minute). Random bytes whose encoding begins with '-' come first here.
    dash = bytes([0xF8]) + bytes(31)
    assert base64.urlsafe_b64encode(dash).startswith(b"-")
    made = iter([dash, dash, bytes(range(32))])
    monkeypatch.setattr(farm.secrets, "token_bytes", lambda _: next(made))
    urlsafe = iter(["-leading", "plain-token"])
    monkeypatch.setattr(farm.secrets, "token_urlsafe", lambda _: next(urlsafe))
    tokens = farm.new_tokens()
    assert tokens["jwt-key"] == base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode()
    assert tokens["client-token"] == "plain-token"


def test_join_takes_copies_of_the_tokens_and_names_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("KEY\n")
    (tmp_path / "t").write_text("TOKEN\n")
    farm.copy_tokens(tmp_path, str(tmp_path / "k"), str(tmp_path / "t"))
    assert (tmp_path / ".torchkiln" / "farm" / "client-token").read_text() == "TOKEN\n"
    with pytest.raises(UserError, match=r"cannot read .*nothere .*copy .torchkiln/farm/jwt-key"):
        farm.copy_tokens(tmp_path, str(tmp_path / "nothere"), str(tmp_path / "t"))


def test_the_status_and_the_token_verdict() -> None:
    assert farm.parse_status(struct.pack("<QQQ", 2, 32, 5)) == farm.Status(2, 32, 5)
    with pytest.raises(ValueError, match="8 bytes"):
        farm.parse_status(b"\0" * 8)
    assert farm.judge_token(400) == ""
    assert farm.judge_token(401) == "refuses BUILD_FARM_TOKEN (401)"
    assert "not as an sccache-dist scheduler" in farm.judge_token(404)


class Scheduler(BaseHTTPRequestHandler):
    """Answers as sccache-dist's scheduler: status for anyone, 401 for a job with a wrong
    token, 400 for an empty job with the right one."""

    servers = 2

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(struct.pack("<QQQ", self.servers, 8 * self.servers, 0))

    def do_POST(self) -> None:
        right = self.headers.get("Authorization") == "Bearer right"
        self.send_response(400 if right else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scheduler() -> str:
    server = HTTPServer(("127.0.0.1", 0), Scheduler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_preflight_says_one_line_for_each_failure(scheduler: str) -> None:
    assert farm.preflight(scheduler, "right") == farm.Status(2, 16, 0)
    with pytest.raises(UserError, match=r"refuses BUILD_FARM_TOKEN \(401\)") as refused:
        farm.preflight(scheduler, "wrong")
    assert "\n" not in str(refused.value) and "wrong" not in str(refused.value)
    with pytest.raises(UserError, match="there is no client token"):
        farm.preflight(scheduler, "")
    with pytest.raises(UserError, match=r"does not answer .*invoke farm up"):
        farm.preflight("http://127.0.0.1:9", "right")
    Scheduler.servers = 0
    try:
        with pytest.raises(UserError, match="has no build server"):
            farm.preflight(scheduler, "right")
    finally:
        Scheduler.servers = 2


def test_the_estimate_divides_the_compile_part_by_the_farms_cores(scheduler: str, tmp_path):
    values = settings.resolve({"CCA": "8.6", "CUDA_FROM": "image", "BUILD_FARM": scheduler,
                               "BUILD_FARM_TOKEN": "right", "MAX_JOBS": "16"})  # fmt: skip
    lines = farm.check(values, tmp_path, cpus=16, memory_bytes=128 * 1024**3)
    assert lines[0].endswith(": 2 servers, 16 cores, 0 jobs in progress")
    assert "16 jobs + 16 farm cores instead of" in lines[1]
    assert farm.compile_hours(64, 16, 48) == 1.0
    assert farm.check(settings.resolve({}), tmp_path) == []


def test_the_servers_completed_counts_come_from_their_logs() -> None:
    logs = (
        "farm-server-1  | torchkiln-farm: server 172.17.0.3:10501, scheduler http://x\n"
        "farm-worker-1  | torchkiln-farm: server 172.17.0.4:10502, scheduler http://x\n"
        "farm-server-1  | [..Z DEBUG sccache_dist::build] Returning result\n"
        * 3
        + "farm-worker-1  | [..Z DEBUG sccache_dist::build] Returning result\n"
    )
    assert farm.completed(logs) == {"172.17.0.3:10501": 3, "172.17.0.4:10502": 1}


def test_build_farm_is_appended_to_env_and_never_replaces_a_users_value() -> None:
    assert farm.env_lines({}, "http://h:10600") == ("BUILD_FARM=http://h:10600\n", None)
    assert farm.env_lines({"BUILD_FARM": "http://h:10600"}, "http://h:10600") == ("", None)
    line, note = farm.env_lines({"BUILD_FARM": "http://other:10600"}, "http://h:10600")
    assert line == "" and note is not None and "keeps BUILD_FARM=http://other:10600" in note
    with pytest.raises(UserError, match="farm join --url URL 'ftp://h'"):
        farm.check_join_url("ftp://h")


@pytest.mark.parametrize(
    ("action", "given", "says"),
    [
        ("up", farm.JoinOptions(url="http://h:10600"), "farm up takes no URL or options"),
        ("status", farm.JoinOptions(port=1), "farm status takes no URL or options"),
        ("join", farm.JoinOptions(), "farm join needs the farm's scheduler"),
        ("start", farm.JoinOptions(), "farm action 'start' is not one of up, join, status, down"),
    ],
)
def test_invoke_farm_refuses_what_its_action_does_not_take(
    tmp_path: Path, action: str, given: farm.JoinOptions, says: str
) -> None:
    with pytest.raises(UserError) as raised:
        farm.run_action(tmp_path, action, {}, given)
    assert str(raised.value).startswith(says) and "\n" not in str(raised.value)


def test_the_compile_preflight_names_the_old_setting_and_a_cache_that_does_not_answer(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    values = settings.resolve({"CCACHE_REMOTE": f"redis://127.0.0.1:{port}"})
    lines = farm.compile_preflight(values, tmp_path)
    assert lines[0].startswith("note: CCACHE_REMOTE is now COMPILE_CACHE")
    assert lines[1].startswith(f"warning: CCACHE_REMOTE: redis://127.0.0.1:{port}")
    assert lines[1].endswith("building with the local cache only") and len(lines) == 2
    assert farm.compile_preflight(settings.resolve({}), tmp_path) == []

"""torchkiln.inimage.compilecache: COMPILE_CACHE as sccache's settings, the farm's settings, and
the summary line read from `sccache --show-stats --stats-format=json` (shapes of sccache 0.16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchkiln import buildsummary
from torchkiln.inimage import compilecache

# `sccache --show-stats --stats-format=json` of sccache 0.16.0 after one miss, one hit and a
# -save-temps call, with a two-level chain (disk, redis) and two farm servers.
STATS = {
    "stats": {
        "compile_requests": 9, "requests_not_cacheable": 1, "requests_executed": 8,
        "cache_errors": {"counts": {}, "adv_counts": {}},
        "cache_hits": {"counts": {"C/C++": 2, "CUDA": 1}, "adv_counts": {}},
        "cache_misses": {"counts": {"C/C++": 4, "PTX": 1}, "adv_counts": {}},
        "cache_timeouts": 0, "cache_read_errors": 0, "compilations": 5, "compile_fails": 0,
        "not_cached": {"-save-temps": 1},
        "dist_compiles": {"172.17.0.3:10501": 2, "172.17.0.4:10501": 1}, "dist_errors": 1,
        "multi_level": [
            {"name": "L0 (disk)", "hits": 1, "misses": 7, "writes": 5, "write_failures": 0},
            {"name": "L1 (redis)", "hits": 2, "misses": 5, "writes": 5, "write_failures": 1},
        ],
    },
    "cache_location": "Multi-level (2 levels)",
}  # fmt: skip


def test_the_summary_line_reads_sccaches_own_counters() -> None:
    line = compilecache.summary_line("pytorch", STATS)
    assert line == (
        "torchkiln-sccache: pytorch hits=3 misses=5 remote_hits=2 remote_errors=1 uncached=1 "
        "local=2 dist=3 dist_errors=1 servers=172.17.0.3:10501:2,172.17.0.4:10501:1 "
        "reasons=-save-temps:1"
    )
    said = buildsummary.sccache_rate(line)
    assert said.startswith("38% (3 hits, 5 misses); 1 hits local, 2 from the team's remote")
    assert "farm: 3 compiled remotely (172.17.0.3:10501 2, 172.17.0.4:10501 1), 2 locally" in said


def test_a_read_only_store_leaves_the_remote_hits_unknown_not_zero() -> None:
    # sccache 0.16 with SCCACHE_REDIS_RW_MODE=READ_ONLY and the chain disk,redis: the hits came
    # from redis (an empty disk cache), and `multi_level` is null.
    stats = {
        "stats": {**STATS["stats"], "multi_level": None, "dist_compiles": {}, "dist_errors": 0}
    }
    line = compilecache.summary_line("pytorch", stats, "disk,redis")
    assert " remote_hits=? remote_errors=0 " in line
    said = buildsummary.sccache_rate(line + "\n" + line.replace("pytorch", "vision"))
    assert said == (
        "38% (6 hits, 10 misses); 6 hits from the local cache or the team's read-only one "
        "(sccache does not count them apart); 2 calls sccache could not cache (-save-temps 2)"
    )
    # The local cache alone: no remote hits, and none unknown.
    local = compilecache.summary_line("pytorch", stats, "disk")
    assert " remote_hits=0 " in local and "team" not in buildsummary.sccache_rate(local)


def test_the_command_reads_stdin_and_survives_garbage(capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import sys

    for text, expect in ((json.dumps(STATS), "hits=3"), ("not json", "unreadable statistics")):
        sys.stdin = io.StringIO(text)
        try:
            assert compilecache.main(["stats", "x"]) == 0
        finally:
            sys.stdin = sys.__stdin__
        assert expect in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:p%24w@10.0.0.5:6379/2|read-only",
         {"SCCACHE_REDIS_ENDPOINT": "redis://10.0.0.5:6379", "SCCACHE_REDIS_PASSWORD": "p$w",
          "SCCACHE_REDIS_DB": "2", "SCCACHE_REDIS_RW_MODE": "READ_ONLY",
          "SCCACHE_MULTILEVEL_CHAIN": "disk,redis"}),
        ("redis://pw@h:1",
         {"SCCACHE_REDIS_ENDPOINT": "redis://h:1", "SCCACHE_REDIS_PASSWORD": "pw",
          "SCCACHE_REDIS_RW_MODE": "READ_WRITE", "SCCACHE_MULTILEVEL_CHAIN": "disk,redis"}),
        ("memcached://m",
         {"SCCACHE_MEMCACHED_ENDPOINT": "tcp://m:11211", "SCCACHE_MEMCACHED_RW_MODE": "READ_WRITE",
          "SCCACHE_MULTILEVEL_CHAIN": "disk,memcached"}),
        ("s3://K:S@bucket/torch/ci|region=eu-west-1|endpoint=https://minio:9000",
         {"SCCACHE_BUCKET": "bucket", "SCCACHE_S3_KEY_PREFIX": "torch/ci",
          "AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S", "SCCACHE_REGION": "eu-west-1",
          "SCCACHE_ENDPOINT": "https://minio:9000", "SCCACHE_S3_RW_MODE": "READ_WRITE",
          "SCCACHE_MULTILEVEL_CHAIN": "disk,s3"}),
        ("gs://b/p",
         {"SCCACHE_GCS_BUCKET": "b", "SCCACHE_GCS_KEY_PREFIX": "p",
          "SCCACHE_GCS_RW_MODE": "READ_WRITE", "SCCACHE_MULTILEVEL_CHAIN": "disk,gcs"}),
        ("webdav+https://u:p@dav.example/cache",
         {"SCCACHE_WEBDAV_ENDPOINT": "https://dav.example/cache", "SCCACHE_WEBDAV_USERNAME": "u",
          "SCCACHE_WEBDAV_PASSWORD": "p", "SCCACHE_WEBDAV_RW_MODE": "READ_WRITE",
          "SCCACHE_MULTILEVEL_CHAIN": "disk,webdav"}),
    ],
)  # fmt: skip
def test_each_store_becomes_sccaches_second_level(url: str, expected: dict[str, str]) -> None:
    assert compilecache.storage_env(url) == expected


def test_the_env_lines_hold_the_secrets_and_the_said_lines_do_not(tmp_path: Path) -> None:
    secrets, private = tmp_path / "secrets", tmp_path / "shm"
    secrets.mkdir()
    private.mkdir()
    (secrets / "compile_cache").write_text("redis://:s3cr3t@10.0.0.5:6379\n")
    (secrets / "build_farm").write_text("http://10.0.0.2:10600\n")
    (secrets / "build_farm_token").write_text("t0ken\n")
    exports, said = compilecache.env_lines({"CCACHE_MAXSIZE": "20G"}, secrets, private)
    text = "\n".join(exports)
    assert "export SCCACHE_REDIS_PASSWORD=s3cr3t" in text and "SCCACHE_CACHE_SIZE=20G" in text
    assert "t0ken" not in text  # sccache reads the farm from a file only
    (config,) = private.iterdir()
    assert f"export SCCACHE_CONF={config}" in text
    assert config.stat().st_mode & 0o777 == 0o600
    assert config.read_text() == (
        '[dist]\nscheduler_url = "http://10.0.0.2:10600"\n'
        'cache_dir = "/root/.cache/sccache/dist-toolchains"\n'
        '[dist.auth]\ntype = "token"\ntoken = "t0ken"\n'
    )
    assert not any("s3cr3t" in line or "t0ken" in line for line in said)
    assert said[0] == "torchkiln: sccache remote storage on (redis, read-write)"
    empty, nothing = compilecache.env_lines({}, tmp_path / "none", private)
    assert "SCCACHE_MULTILEVEL_CHAIN=disk" in "\n".join(empty) and nothing == []
    assert "SCCACHE_CONF" not in "\n".join(empty)
    # A store that kept the server from starting: the same step's settings without it.
    local, said = compilecache.env_lines({}, secrets, private, remote=False)
    assert "REDIS" not in "\n".join(local) and "SCCACHE_MULTILEVEL_CHAIN=disk" in "\n".join(local)
    assert "SCCACHE_CONF" in "\n".join(local) and not any("remote storage" in x for x in said)
    (secrets / "build_farm_token").write_text("")
    untokened, said = compilecache.env_lines({}, secrets, private)
    assert "SCCACHE_CONF" not in "\n".join(untokened) and "has no token" in said[-1]


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ('{"SchedulerStatus":["http://s:10600/",{"num_servers":2,"num_cpus":4,"in_progress":0}]}',
         "torchkiln-sccache-farm: x connected servers=2 cores=4"),
        ('{"NotConnected":["http://s:10600/","error sending request"]}',
         "torchkiln-sccache-farm: x NotConnected: http://s:10600/ error sending request"),
        ("", "torchkiln-sccache-farm: x no status"),
    ],
)  # fmt: skip
def test_the_farm_line_says_why_compiles_fell_back(tmp_path: Path, status: str, line: str) -> None:
    (tmp_path / "s.json").write_text(status)
    assert compilecache.farm_line("x", tmp_path / "s.json") == line

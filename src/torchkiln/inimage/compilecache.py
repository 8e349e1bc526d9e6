"""sccache, the compile launcher of every build step: its environment (the local cache on the
BuildKit cache mount, the team's COMPILE_CACHE as a second level, the build farm) and the one
summary line per compile step, read from `sccache --show-stats --stats-format=json`.

Standard library only (it runs in the build stages). The decisions (`storage_env`, `farm_env`,
`summary_line`) are pure functions; `main` is the edge, and prints shell lines for `eval` or
the summary line. Secrets (the cache URL, the farm token) are read from the step's secret files
and only ever reach `export` lines, never a printed message.

COMPILE_CACHE, by scheme (sccache's own storage backends, behind the local disk cache):
  redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss://…  Redis (SCCACHE_REDIS_*)
  memcached://HOST[:PORT]                               memcached (SCCACHE_MEMCACHED_*)
  s3://[KEY_ID:SECRET@]BUCKET[/PREFIX]                  S3 or an S3-compatible store
  gs://BUCKET[/PREFIX]                                  Google Cloud Storage (SCCACHE_GCS_*)
  webdav+http(s)://[USER:PASSWORD@]HOST[/PATH], http(s)://…  WebDAV (a ccache http store, too)
Attributes after the URL: `|read-only`; for s3 also `|region=R` and `|endpoint=URL`.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

SECRETS = Path("/run/secrets")
CACHE_SECRET = "compile_cache"
FARM_SECRET = "build_farm"
FARM_TOKEN_SECRET = "build_farm_token"
# A tmpfs in every build step's container, never part of a layer: the farm's client settings.
PRIVATE = Path("/dev/shm")
FARM_LINE_PREFIX = "torchkiln-sccache-farm:"
LINE_PREFIX = "torchkiln-sccache:"
SCHEMES = ("redis", "rediss", "memcached", "s3", "gs", "webdav+http", "webdav+https", "http")
SCHEMES += ("https",)


class CacheURLError(ValueError):
    """A COMPILE_CACHE value sccache cannot use (the message never holds the password)."""


def split_attributes(value: str) -> tuple[str, dict[str, str]]:
    """`URL|name=value|flag` -> (URL, {name: value, flag: 'true'})."""
    url, *items = value.strip().split("|")
    attributes = {}
    for item in items:
        name, sep, setting = item.partition("=")
        attributes[name.strip()] = setting.strip() if sep else "true"
    return url, attributes


def storage_env(value: str) -> dict[str, str]:
    """The sccache variables of one COMPILE_CACHE value: the local disk first, the team's store
    second (SCCACHE_MULTILEVEL_CHAIN), so a hit in either is a hit and a local miss is filled
    from the remote (sccache's backfill)."""
    url, attributes = split_attributes(value)
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES or not parsed.hostname:
        shown = f"{scheme}://{parsed.hostname or ''}"
        raise CacheURLError(f"COMPILE_CACHE '{shown}…' is not one of {', '.join(SCHEMES)}")
    read_only = attributes.get("read-only", "false") != "false"
    mode = "READ_ONLY" if read_only else "READ_WRITE"
    user = urllib.parse.unquote(parsed.username or "")
    password = urllib.parse.unquote(parsed.password or "")
    port = f":{parsed.port}" if parsed.port else ""
    host = f"{parsed.hostname}{port}"
    prefix = parsed.path.strip("/")
    env: dict[str, str] = {}
    if scheme in ("redis", "rediss"):
        env["SCCACHE_REDIS_ENDPOINT"] = f"{scheme}://{host}"
        if parsed.username and parsed.password is None:  # redis://PASSWORD@HOST (ccache's form)
            user, password = "", user
        if user:
            env["SCCACHE_REDIS_USERNAME"] = user
        if password:
            env["SCCACHE_REDIS_PASSWORD"] = password
        if prefix.isdigit():
            env["SCCACHE_REDIS_DB"] = prefix
        env["SCCACHE_REDIS_RW_MODE"] = mode
        level = "redis"
    elif scheme == "memcached":
        env["SCCACHE_MEMCACHED_ENDPOINT"] = f"tcp://{parsed.hostname}:{parsed.port or 11211}"
        env["SCCACHE_MEMCACHED_RW_MODE"] = mode
        level = "memcached"
    elif scheme == "s3":
        env["SCCACHE_BUCKET"] = parsed.hostname or ""
        if prefix:
            env["SCCACHE_S3_KEY_PREFIX"] = prefix
        if user:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = user, password
        else:
            env["SCCACHE_S3_NO_CREDENTIALS"] = "true"
        for name, variable in (("region", "SCCACHE_REGION"), ("endpoint", "SCCACHE_ENDPOINT")):
            if attributes.get(name):
                env[variable] = attributes[name]
        env["SCCACHE_S3_RW_MODE"] = mode
        level = "s3"
    elif scheme == "gs":
        env["SCCACHE_GCS_BUCKET"] = parsed.hostname or ""
        if prefix:
            env["SCCACHE_GCS_KEY_PREFIX"] = prefix
        env["SCCACHE_GCS_RW_MODE"] = mode
        level = "gcs"
    else:  # WebDAV: webdav+http(s)://, and ccache's http(s):// stores
        base = scheme.removeprefix("webdav+")
        env["SCCACHE_WEBDAV_ENDPOINT"] = f"{base}://{host}/{prefix}".rstrip("/")
        if user:
            env["SCCACHE_WEBDAV_USERNAME"] = user
        if password:
            env["SCCACHE_WEBDAV_PASSWORD"] = password
        env["SCCACHE_WEBDAV_RW_MODE"] = mode
        level = "webdav"
    env["SCCACHE_MULTILEVEL_CHAIN"] = f"disk,{level}"
    return env


def describe(value: str) -> str:
    """What a COMPILE_CACHE value is, naming neither host nor credentials: '(redis, read-write)'."""
    url, attributes = split_attributes(value)
    read_only = attributes.get("read-only", "false") != "false"
    scheme = urllib.parse.urlsplit(url).scheme.lower().removeprefix("webdav+")
    kind = {"http": "webdav", "https": "webdav"}.get(scheme, scheme)
    return f"({kind}, {'read-only' if read_only else 'read-write'})"


def dist_config(scheduler: str, token: str) -> str:
    """sccache's client configuration for a build farm (sccache reads the farm from a file
    only): the scheduler, the client token, and where packaged toolchains are kept. Every
    compile is offered to the farm; sccache compiles locally whatever the farm does not take."""
    return (
        "[dist]\n"
        f"scheduler_url = {json.dumps(scheduler.rstrip('/'))}\n"
        'cache_dir = "/root/.cache/sccache/dist-toolchains"\n'
        "[dist.auth]\n"
        'type = "token"\n'
        f"token = {json.dumps(token)}\n"
    )


def write_private(folder: Path, text: str) -> Path:
    """Write a file only root can read in a folder no layer keeps (a tmpfs: /dev/shm)."""
    fd, name = tempfile.mkstemp(prefix="torchkiln-sccache-", suffix=".toml", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(name)


def _read(name: str, secrets: Path) -> str:
    try:
        return (secrets / name).read_text("utf-8").strip()
    except OSError:
        return ""


def env_lines(
    environ: Mapping[str, str],
    secrets: Path = SECRETS,
    private: Path = PRIVATE,
    remote: bool = True,
) -> tuple[list[str], list[str]]:
    """(export lines for eval, lines to say): the local cache, COMPILE_CACHE (unless `remote`
    is False: the team's store left out), the farm."""
    variables = {
        "SCCACHE_DIR": environ.get("SCCACHE_DIR") or "/root/.cache/sccache",
        "SCCACHE_CACHE_SIZE": environ.get("CCACHE_MAXSIZE") or "40G",
        # One server per build step, stopped by the step: no idle exit during a long link.
        "SCCACHE_IDLE_TIMEOUT": "0",
        "SCCACHE_MULTILEVEL_CHAIN": "disk",
    }
    said = []
    cache = _read(CACHE_SECRET, secrets) if remote else ""
    if cache:
        try:
            variables.update(storage_env(cache))
            said.append(f"torchkiln: sccache remote storage on {describe(cache)}")
        except CacheURLError as error:
            said.append(f"torchkiln: {error}; building with the local cache only")
    farm = _read(FARM_SECRET, secrets)
    token = _read(FARM_TOKEN_SECRET, secrets)
    if farm and not token:
        # sccache fails a compile the scheduler refuses (401) instead of compiling it here.
        said.append(f"torchkiln: the build farm {farm} has no token in this step; compiling here")
    elif farm:
        config = write_private(private, dist_config(farm, token))
        variables["SCCACHE_CONF"] = str(config)
        said.append(f"torchkiln: sccache sends compiles to the build farm {farm}")
    exports = [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    return exports, said


def _count(table: object) -> int:
    if isinstance(table, Mapping):
        counts = table.get("counts", table)
        return sum(int(value) for value in counts.values() if isinstance(value, int))
    return 0


def summary_line(name: str, shown: Mapping[str, object], chain: str = "") -> str:
    """One machine-readable line from `sccache --show-stats --stats-format=json`: hits (of
    them remote: from a level after the local disk), misses, remote errors, calls sccache could
    not cache (its reasons), compiles run on the farm (per server), and farm errors (compiles
    that fell back to this machine). `chain` is the step's SCCACHE_MULTILEVEL_CHAIN: sccache 0.16
    gives no per-level figures for a chain with a read-only level (its `multi_level` is null),
    and then the remote hits are `?`, not 0."""
    stats = shown.get("stats", {})
    assert isinstance(stats, Mapping)
    hits, misses = _count(stats.get("cache_hits")), _count(stats.get("cache_misses"))
    levels = stats.get("multi_level") or []
    remote: int | str = sum(int(level.get("hits", 0)) for level in levels[1:])
    if not levels and "," in chain:
        remote = "?"
    errors = sum(int(level.get("write_failures", 0)) for level in levels[1:])
    errors += int(stats.get("cache_read_errors", 0)) + int(stats.get("cache_timeouts", 0))
    errors += _count(stats.get("cache_errors"))
    reasons = dict(stats.get("not_cached") or {})
    uncached = sum(reasons.values())
    servers = dict(stats.get("dist_compiles") or {})
    dist = sum(servers.values())
    fallback = int(stats.get("dist_errors", 0))
    local = max(0, int(stats.get("compilations", 0)) - dist)

    def pairs(table: Mapping[str, int]) -> str:
        return ",".join(f"{key.replace(' ', '_')}:{count}" for key, count in table.items()) or "-"

    return (
        f"{LINE_PREFIX} {name} hits={hits} misses={misses} remote_hits={remote} "
        f"remote_errors={errors} uncached={uncached} local={local} dist={dist} "
        f"dist_errors={fallback} servers={pairs(servers)} reasons={pairs(reasons)}"
    )


def dist_cores(text: str) -> int:
    """The farm's cores from `sccache --dist-status` (0 when not connected)."""
    try:
        shown = json.loads(text or "null")
        return int(shown["SchedulerStatus"][1]["num_cpus"])
    except (ValueError, KeyError, IndexError, TypeError):
        return 0


def farm_line(name: str, status: Path) -> str:
    """What `sccache --dist-status` said at the end of the step (why compiles fell back)."""
    try:
        shown = json.loads(status.read_text("utf-8") or "null")
    except (OSError, ValueError):
        shown = None
    if isinstance(shown, Mapping) and shown:
        kind, detail = next(iter(shown.items()))
        if kind == "SchedulerStatus" and isinstance(detail, list) and len(detail) == 2:
            info = detail[1]
            return (
                f"{FARM_LINE_PREFIX} {name} connected servers={info.get('num_servers')} "
                f"cores={info.get('num_cpus')}"
            )
        text = " ".join(str(item) for item in detail) if isinstance(detail, list) else detail
        return f"{FARM_LINE_PREFIX} {name} {kind}: {text}"
    return f"{FARM_LINE_PREFIX} {name} no status"


def main(argv: list[str] | None = None) -> int:
    """`env [--local]`: export lines for eval (stderr: what is on; --local: without the team's
    store, for a server that could not start with it); `stats NAME [DIST-STATUS-FILE]`: the
    summary line of the JSON on stdin (and the farm's state at the end of the step); `cores`:
    the farm's cores from `sccache --dist-status` on stdin."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["env"], ["env", "--local"]):
        exports, said = env_lines(os.environ, remote=args != ["env", "--local"])
        print("\n".join(exports))
        for line in said:
            print(line, file=sys.stderr)
        return 0
    if args == ["cores"]:
        print(dist_cores(sys.stdin.read()))
        return 0
    if len(args) in (2, 3) and args[0] == "stats":
        if len(args) == 3:
            print(farm_line(args[1], Path(args[2])))
        text = sys.stdin.read()
        try:
            shown = json.loads(text)
        except json.JSONDecodeError:
            print(f"{LINE_PREFIX} {args[1]} unreadable statistics: {text[:200]!r}")
            return 0
        print(summary_line(args[1], shown, os.environ.get("SCCACHE_MULTILEVEL_CHAIN", "")))
        return 0
    print(
        "usage: python -m torchkiln.inimage.compilecache env [--local] | stats NAME [FILE] | cores",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())

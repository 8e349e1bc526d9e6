"""sccache on the host side: the settings COMPILE_CACHE, BUILD_FARM and BUILD_FARM_TOKEN as the
build's secrets, the migration from CCACHE_REMOTE, and the summary of the lines the compile
steps print (docker/scripts/net.sh's compile_cache_stats, torchkiln.inimage.compilecache).

Pure functions, except `farm_token`, which reads the token `invoke farm.*` wrote.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from torchkiln import urls
from torchkiln.errors import UserError

# The build secrets (compose/compose.yaml, docker/Dockerfile), each read from the variable
# of the same name in upper case: the compile steps only.
CACHE_SECRET = "compile_cache"
FARM_SECRET = "build_farm"
FARM_TOKEN_SECRET = "build_farm_token"
SECRET_IDS = (CACHE_SECRET, FARM_SECRET, FARM_TOKEN_SECRET)
# Where `invoke farm.up|farm.join` keeps the farm's tokens, under the checkout's state folder.
FARM_DIR = "farm"
CLIENT_TOKEN_FILE = "client-token"

CACHE_SCHEMES = ("redis", "rediss", "memcached", "s3", "gs", "webdav+http", "webdav+https")
CACHE_SCHEMES += ("http", "https")
CACHE_FORM = (
    "redis://[:PASSWORD@]HOST:6379, memcached://HOST:11211, s3://[KEY_ID:SECRET@]BUCKET/PREFIX "
    "(|region=R|endpoint=URL), gs://BUCKET/PREFIX or webdav+https://[USER:PASSWORD@]HOST/PATH, "
    "optionally ending in |read-only"
)

_FARM_LINE = re.compile(r"torchkiln-sccache-farm: (\S+) (?!connected )(.+)$", re.MULTILINE)
_LINE = re.compile(
    r"torchkiln-sccache: (\S+) hits=(\d+) misses=(\d+) remote_hits=(\d+) remote_errors=(\d+) "
    r"uncached=(\d+) local=(\d+) dist=(\d+) dist_errors=(\d+) servers=(\S+) reasons=(\S+)"
)


def parse_compile_cache(value: str, name: str = "COMPILE_CACHE") -> urls.URL:
    """Parse COMPILE_CACHE (or a CCACHE_REMOTE read as it), or refuse it in one line."""
    return urls.parse(name, value, schemes=CACHE_SCHEMES, form=CACHE_FORM, attributes=True)


def cache_setting(values: Mapping[str, str]) -> tuple[str, str]:
    """(the setting's name, its value): COMPILE_CACHE, else an old CCACHE_REMOTE, else ('', '')."""
    for name in ("COMPILE_CACHE", "CCACHE_REMOTE"):
        if values.get(name, "").strip():
            return name, values[name].strip()
    return "", ""


def migration_note(values: Mapping[str, str]) -> str | None:
    """The one line for a .env that still sets CCACHE_REMOTE (its value is used as it is)."""
    if values.get("CCACHE_REMOTE", "").strip() and not values.get("COMPILE_CACHE", "").strip():
        return (
            "note: CCACHE_REMOTE is now COMPILE_CACHE (sccache compiles every step); its value "
            "is used as COMPILE_CACHE: rename the line in .env to COMPILE_CACHE=… to silence this"
        )
    return None


def farm_token(values: Mapping[str, str], root: Path, state_dir: str) -> str:
    """BUILD_FARM_TOKEN, else the client token invoke farm.up or farm.join wrote here."""
    if values.get("BUILD_FARM_TOKEN", "").strip():
        return values["BUILD_FARM_TOKEN"].strip()
    try:
        return (root / state_dir / FARM_DIR / CLIENT_TOKEN_FILE).read_text("utf-8").strip()
    except OSError:
        return ""


def secrets(values: Mapping[str, str], token: str = "") -> dict[str, str]:
    """The variables the build secrets are read from: the cache URL in its normal form (user
    and password percent-encoded), the farm's scheduler and its client token."""
    _, cache = cache_setting(values)
    if cache:
        cache = parse_compile_cache(cache).text()
    farm = values.get("BUILD_FARM", "").strip().rstrip("/")
    return {
        CACHE_SECRET.upper(): cache,
        FARM_SECRET.upper(): farm,
        FARM_TOKEN_SECRET.upper(): token if farm else "",
    }


def check_farm(name: str, value: str) -> None:
    """BUILD_FARM: the scheduler's http(s)://HOST:PORT, no password, no path."""
    url = urls.parse(name, value, form="http://HOST:10600")
    if url.password or url.user:
        raise UserError(
            f"{name} '{url.text(masked=True)}' holds a user or password; the farm's client "
            f"token goes in BUILD_FARM_TOKEN (or invoke farm.join writes it)"
        )
    if url.path.strip("/"):
        raise UserError(f"{name} '{value}' has a path; write it as http://HOST:10600")


def _pairs(text: str) -> dict[str, int]:
    if text == "-":
        return {}
    found: dict[str, int] = {}
    for item in text.split(","):
        key, _, count = item.rpartition(":")
        found[key] = found.get(key, 0) + int(count)
    return found


def summary(log: str) -> str:
    """Summarise the compile steps' sccache lines: hit rate, local and remote hits, what could
    not be cached and why, what ran on the farm (per server) and what fell back, and why."""
    steps = 0
    totals = dict.fromkeys(("hits", "misses", "remote", "errors", "uncached", "local"), 0)
    totals.update(dist=0, fallback=0)
    servers: dict[str, int] = {}
    reasons: dict[str, int] = {}
    fell_back: set[str] = set()  # the steps some of whose compiles the farm did not take
    for match in _LINE.finditer(log):
        steps += 1
        if int(match[9]):
            fell_back.add(match[1])
        for key, group in zip(totals, match.groups()[1:9], strict=True):
            totals[key] += int(group)
        for key, count in _pairs(match[10]).items():
            servers[key] = servers.get(key, 0) + count
        for key, count in _pairs(match[11]).items():
            reasons[key] = reasons.get(key, 0) + count
    if not steps:
        return "no compile step ran (BuildKit took them from its cache)"
    hits, misses = totals["hits"], totals["misses"]
    text = f"{steps} compile step{'s' if steps != 1 else ''} ran"
    if hits + misses:
        text = f"{100 * hits / (hits + misses):.0f}% ({hits} hits, {misses} misses)"
        if totals["remote"] or totals["errors"]:
            text += f"; {hits - totals['remote']} hits local, {totals['remote']} from the team's"
            text += " remote cache"
    elif not totals["uncached"]:
        return f"{text}; no compiler call of theirs went through sccache"
    if totals["uncached"]:
        why = ", ".join(f"{key} {count}" for key, count in sorted(reasons.items()))
        text += f"; {totals['uncached']} calls sccache could not cache ({why})"
    if totals["errors"]:
        text += f"; WARNING the remote cache failed {totals['errors']} times"
    if servers or totals["fallback"]:
        each = ", ".join(f"{key} {count}" for key, count in sorted(servers.items()))
        text += f"; farm: {totals['dist']} compiled remotely ({each or 'none'}), "
        text += f"{totals['local']} locally"
    if totals["fallback"]:
        said = [f"{step}: {text}" for step, text in _FARM_LINE.findall(log) if step in fell_back]
        why = "; ".join(dict.fromkeys(said))
        text += (
            f"; WARNING {totals['fallback']} compiles fell back to this machine: the farm did "
            f"not take them ({why or 'it stopped answering during the step'})"
        )
    return text

"""sccache on the host side: the settings COMPILE_CACHE, BUILD_FARM and BUILD_FARM_TOKEN as the
build's secrets, and the migration from CCACHE_REMOTE (the summary of the lines the compile steps
print is buildsummary.sccache_rate).

Pure functions, except `farm_token`, which reads the token `invoke farm.*` wrote.
"""

from __future__ import annotations

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
# Where `invoke farm up|join` keeps the farm's tokens, under the checkout's state folder.
FARM_DIR = "farm"
CLIENT_TOKEN_FILE = "client-token"

CACHE_SCHEMES = ("redis", "rediss", "memcached", "s3", "gs", "webdav+http", "webdav+https")
CACHE_SCHEMES += ("http", "https")
CACHE_FORM = (
    "redis://[:PASSWORD@]HOST:6379, memcached://HOST:11211, s3://[KEY_ID:SECRET@]BUCKET/PREFIX "
    "(|region=R|endpoint=URL), gs://BUCKET/PREFIX or webdav+https://[USER:PASSWORD@]HOST/PATH, "
    "optionally ending in |read-only"
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
    """BUILD_FARM_TOKEN, else the client token invoke farm up or farm join wrote here."""
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
            f"token goes in BUILD_FARM_TOKEN (or invoke farm join writes it)"
        )
    if url.path.strip("/"):
        raise UserError(f"{name} '{value}' has a path; write it as http://HOST:10600")

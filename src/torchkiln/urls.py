"""The URLs a user gives (COMPILE_CACHE, PIP_INDEX_URL, TORCH_INDEX_URL, APT_MIRROR): one parser
for the settings' checks, the host's probes and what the build gets, so that a password never
breaks a step and never shows up in a message. Pure functions.

A password may hold any character. Everything between `://` and the last `@` is
`USER:PASSWORD` (split at the first `:`), written raw or percent-encoded (`%2F` is `/`; a literal
`%` followed by two hex digits must be written `%25`). The normal form percent-encodes both, so
that `$`, `#`, `/`, spaces and quotes reach `.env`, Compose, the shell and the compile cache
unchanged: Compose reads `$` in `.env` as a variable, and percent-encoding in the user and
password is the escape that survives both.
"""

from __future__ import annotations

import difflib
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace

from torchkiln.errors import UserError

MASK = "****"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The attributes the compile cache (sccache) takes after its URL (`URL|name=value|…`), with the
# values each takes and the schemes it applies to; any other would be ignored without a word.
_BOOLEAN = r"true|false"
CACHE_ATTRIBUTES = {
    "read-only": (rf"(?:{_BOOLEAN})?", ()),
    # sccache's S3 store (COMPILE_CACHE=s3://…): its region and an S3-compatible endpoint.
    "region": (r"[a-z0-9-]+", ("s3",)),
    "endpoint": (r"https?://[^|\s]+", ("s3",)),
}


@dataclass(frozen=True)
class URL:
    """A parsed URL; user and password decoded, the rest as written."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    path: str
    attributes: tuple[tuple[str, str | None], ...] = ()

    @property
    def has_password(self) -> bool:
        """Tell whether the URL holds a password (or a secret attribute)."""
        return bool(self.password)

    @property
    def read_only(self) -> bool:
        """The read-only attribute (read-only, or read-only=true)."""
        return any(name == "read-only" and value != "false" for name, value in self.attributes)

    def text(self, *, masked: bool = False) -> str:
        """The normal form (user and password percent-encoded); masked hides every secret."""
        userinfo = ""
        if self.user is not None or self.password is not None:
            userinfo = _encode(self.user or "")
            if self.password is not None:
                userinfo += ":" + (MASK if masked else _encode(self.password))
            userinfo += "@"
        return self._with_userinfo(userinfo)

    def _with_userinfo(self, userinfo: str) -> str:
        port = f":{self.port}" if self.port is not None else ""
        attributes = ""
        for name, value in self.attributes:
            attributes += f"|{name}" if value is None else f"|{name}={value}"
        return f"{self.scheme}://{userinfo}{self.host}{port}{self.path}{attributes}"

    def without_password(self) -> URL:
        """The same URL with no password (the user, if any, stays)."""
        return replace(self, password=None, user=self.user or None)


def _encode(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _decode(text: str) -> str:
    return urllib.parse.unquote(text, errors="strict") if "%" in text else text


def shown(value: str) -> str:
    """A value as messages may show it: whatever stands between `://` and the last `@` (user
    and password) becomes ****, so even a value that does not parse leaks no password; control
    characters are escaped, so the message stays one line."""
    value = _CONTROL.sub(lambda found: repr(found[0])[1:-1], value)  # one line, always
    match = _SCHEME.match(value)
    if not match or "@" not in match[2]:
        return value
    return f"{match[1]}://{MASK}@{match[2].rpartition('@')[2]}"


def parse(
    name: str,
    value: str,
    *,
    schemes: tuple[str, ...] = ("http", "https"),
    form: str = "https://HOST/PATH",
    attributes: bool = False,
) -> URL:
    """Parse a URL setting, or refuse it in one line that names the setting and masks the
    password. `attributes` allows the compile cache's `|name=value` items after the host."""

    def refuse(problem: str) -> UserError:
        return UserError(f"{name} '{shown(value)}' {problem}; write it as {form}")

    if _CONTROL.search(value):
        raise refuse("holds a line break or control character")
    match = _SCHEME.fullmatch(value)
    if not match:
        raise refuse("is not a URL")
    scheme, rest = match[1].lower(), match[2]
    if scheme not in schemes:
        raise refuse(f"has the scheme {scheme}://, not {' or '.join(s + '://' for s in schemes)}")
    userinfo, at, tail = rest.rpartition("@")
    host_match = _HOST.match(tail)
    if not host_match:
        raise refuse("names no host")
    host, tail = host_match[0], tail[host_match.end() :]
    port = None
    if tail.startswith(":"):
        digits = re.match(r":([^/?|]*)", tail)
        assert digits is not None
        if not re.fullmatch(r"\d{1,5}", digits[1]) or not 1 <= int(digits[1]) <= 65535:
            raise refuse(f"has the port '{digits[1]}', not a number from 1 to 65535")
        port, tail = int(digits[1]), tail[digits.end() :]
    path, bar, extra = tail.partition("|") if attributes else (tail, "", "")
    if path and not path.startswith(("/", "?")):
        raise refuse(f"has '{path}' after the host, where a port (:6379) or a path (/…) goes")
    if re.search(r"\s", path):
        raise refuse("has a space in its path (write it as %20)")
    items = _attributes(name, value, form, extra, scheme) if bar else ()
    try:
        user, sep, password = (_decode(part) for part in userinfo.partition(":"))
    except UnicodeDecodeError:
        raise refuse("has a percent-encoded user or password that is not UTF-8") from None
    if not at:
        return URL(scheme, None, None, host, port, path, items)
    if not sep and scheme == "redis":
        # redis://PASSWORD@HOST: Redis before 6 knows only a password here.
        return URL(scheme, None, user, host, port, path, items)
    return URL(scheme, user or None, password if sep else None, host, port, path, items)


def _attributes(
    name: str, value: str, form: str, text: str, scheme: str
) -> tuple[tuple[str, str | None], ...]:
    items: list[tuple[str, str | None]] = []
    for item in text.split("|"):
        key, sep, setting = item.partition("=")
        if key not in CACHE_ATTRIBUTES:
            close = difflib.get_close_matches(key, list(CACHE_ATTRIBUTES), n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else f"the compile cache takes {', '.join(CACHE_ATTRIBUTES)}"
            )
            raise UserError(
                f"{name} '{shown(value)}' has the attribute '|{key}', which the compile cache "
                f"(sccache) does not take and would ignore; {hint} (form: {form})"
            )
        pattern, only = CACHE_ATTRIBUTES[key]
        if only and scheme not in only:
            raise UserError(
                f"{name} '{shown(value)}' has '|{key}', which applies to "
                f"{' and '.join(s + '://' for s in only)} caches only; remove it (form: {form})"
            )
        if not re.fullmatch(pattern, setting) or (sep and not setting):
            raise UserError(
                f"{name} '{shown(value)}' has '|{key}={setting}', which is not a value the "
                f"compile cache takes for {key} (form: {form})"
            )
        if key == "read-only":  # one spelling: present means read-only
            if setting != "false":
                items.append((key, None))
            continue
        items.append((key, setting if sep else None))
    return tuple(items)


def normalizer(
    *, schemes: tuple[str, ...] = ("http", "https"), attributes: bool = False
) -> Callable[[str], str]:
    """A settings normal form: stripped, and when it parses, user and password percent-encoded
    (a value that does not parse stays as given, for the check to refuse)."""

    def normalize(value: str) -> str:
        value = value.strip()
        if not value:
            return value
        try:
            return parse("URL", value, schemes=schemes, attributes=attributes).text()
        except UserError:
            return value

    return normalize


def password_of(value: str, scheme_ok: tuple[str, ...] = ("http", "https", "redis")) -> str | None:
    """The password in a URL value, None when there is none or it does not parse."""
    try:
        url = parse("URL", value.strip(), schemes=scheme_ok, attributes=True)
    except UserError:
        return None
    return url.password or None


def mask_text(text: str) -> str:
    """Mask every `scheme://USER:PASSWORD@` in free text (command lines, notes)."""
    return re.sub(
        r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s@/]*?):([^\s@]+)@",
        lambda match: f"{match[1]}{match[2]}:{MASK}@",
        text,
    )

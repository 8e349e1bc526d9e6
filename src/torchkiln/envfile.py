"""`.env`, the one file of settings: where it is, reading it (errors as file:line, unknown keys
named), rendering it from the settings model, writing it atomically with a backup, and keeping
it private when it holds a credential."""

from __future__ import annotations

import difflib
import io
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from torchkiln import settings, urls
from torchkiln.errors import UserError

NAME = ".env"
# Names .env may hold besides the settings: Compose's own and the proxy variables.
OTHER_NAMES = {
    "COMPOSE_PATH_SEPARATOR",
    "COMPOSE_PROFILES",
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    *(
        name
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
        for name in (proxy, proxy.lower())
    ),
}
# A set NAME=value whose name says secret, or a URL with a password (the parser the build uses,
# so redis://:PASSWORD@ and redis://PASSWORD@ count too): such a .env is readable by its owner
# only.
_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"^[ \t]*(?:export[ \t]+)?([A-Za-z_]\w*)[ \t]*=[ \t]*(.*)$", re.DOTALL)
# The `$` forms Compose and python-dotenv read alike in an unquoted or double-quoted value.
_SHARED_REFERENCE = re.compile(r"\$\{[A-Za-z_]\w*(?::-[^}$]*)?\}")


def path(root: Path) -> Path:
    """The project's .env (Compose reads the same file)."""
    return root / NAME


def parse(text: str, source: Path) -> dict[str, str | None]:
    """Parse .env text with python-dotenv; refuse the first line it cannot read."""
    from dotenv.main import DotEnv
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            shown = masked_line(binding.original.string.strip())
            raise UserError(
                f"{source}:{line}: cannot read '{shown}'; write NAME=value (quote values with "
                f"spaces), or run invoke env --force to rewrite .env"
            )
        _check_dollars(binding.original.string, source, line)
    values = DotEnv(dotenv_path=None, stream=io.StringIO(text), interpolate=True).dict()
    return dict(values)


def assignment_lines(text: str) -> dict[str, int]:
    """The line of .env text that sets each name (the last one, which wins)."""
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _ASSIGNMENT.match(line)
        if match and not line.lstrip().startswith("#"):
            found[match[1]] = number
    return found


def read_readable(file: Path) -> tuple[dict[str, str | None], dict[str, int]]:
    """Read what can be read of a .env that `read` refused: the values of its good lines, and
    the names of the lines it cannot give with their numbers ('' for a line that names none)."""
    from dotenv.parser import parse_stream

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}, {}
    good: list[str] = []
    bad: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        line, raw = binding.original.line, binding.original.string
        try:
            if binding.error:
                raise UserError("unreadable")
            _check_dollars(raw, file, line)
        except UserError:
            match = _ASSIGNMENT.match(raw.strip())
            bad[match[1] if match else ""] = line
            continue
        good.append(raw if raw.endswith("\n") else raw + "\n")
    return parse("".join(good), file), bad


def read(file: Path) -> dict[str, str | None]:
    """Read a .env file; an absent file is empty; any other problem is one line with a fix."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise UserError(
            f"{file} is a directory, not a settings file; move it away, then run invoke env"
        ) from None
    except PermissionError:
        raise UserError(
            f"{file} cannot be read (permission denied); make it yours (chown) or run "
            f"invoke env --force as the user who builds"
        ) from None
    except UnicodeDecodeError as error:
        raise UserError(f"{file}: not UTF-8 text ({error.reason}); fix or remove it") from None
    except OSError as error:
        raise UserError(f"{file} cannot be read ({error.strerror}); fix or remove it") from None
    return parse(text, file)


def secret_name(name: str) -> bool:
    """Tell whether a setting's name says it holds a secret (*TOKEN*, *PASSWORD*, *SECRET*)."""
    return bool(_SECRET_NAME.search(name))


def masked_line(line: str) -> str:
    """A .env line as a message may show it: the value of a secret-named setting and any URL
    password hidden."""
    match = _ASSIGNMENT.match(line)
    if not match:
        return urls.mask_text(line)
    name, value = match[1], match[2].strip()
    if _SECRET_NAME.search(name) and value:
        return f"{name}={urls.MASK}"
    quote = value[:1] if value[:1] in ("'", '"') else ""
    inner = value[1:-1] if quote and len(value) > 1 and value.endswith(quote) else value
    return f"{name}={quote}{urls.mask_text(urls.shown(inner))}{quote if inner != value else ''}"


def _check_dollars(line: str, source: Path, number: int) -> None:
    # Compose reads $NAME and $$ in an unquoted or double-quoted value; python-dotenv (the host's
    # checks) does not: the build would get another value than the one checked.
    match = _ASSIGNMENT.match(line.strip())
    if not match or match[2].lstrip().startswith("'"):
        return
    value = match[2] if match[2].lstrip().startswith('"') else re.split(r"\s#", match[2])[0]
    if "$" in _SHARED_REFERENCE.sub("", value):
        shown = masked_line(line.strip())
        raise UserError(
            f"{source}:{number}: '{shown}' holds a '$' that docker compose reads as a variable "
            f"(and python-dotenv does not), so the build would get another value; put the value "
            f"in single quotes ({match[1]}='…'), or write $ as %24 inside a URL"
        )


def unknown_names(values: Mapping[str, str | None]) -> list[str]:
    """Describe each name in .env that no setting has, with the closest known one."""
    known = set(settings.BY_NAME) | OTHER_NAMES
    notes = []
    for name in values:
        if name in known:
            continue
        # A known name with a word added (CCA_LIST) or a misspelling of one (PYTORCH_VERISON).
        close = [known for known in settings.BY_NAME if name.startswith(f"{known}_")]
        close = close or difflib.get_close_matches(name, sorted(settings.BY_NAME), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see env.example for the names"
        notes.append(f"{name} is not a torchkiln setting and is ignored{hint}")
    return notes


def quote(value: str) -> str:
    """Quote a .env value when Compose and python-dotenv would otherwise misread it."""
    # Unquoted only where Compose and python-dotenv read it alike: ${NAME} references, no other $.
    plain = "$" not in _SHARED_REFERENCE.sub("", value)
    if value and plain and re.fullmatch(r"[A-Za-z0-9_./:;@+,=${}%-]+", value):
        return value
    if "'" in value:
        shown = urls.mask_text(urls.shown(value))
        raise UserError(f"value '{shown}' contains a single quote, which .env cannot hold")
    return f"'{value}'"


def render(values: Mapping[str, str], written: Iterable[str], header: str) -> str:
    """Render a .env: settings in `written` as NAME=value, the others as commented defaults."""
    chosen = set(written)
    lines = [header.rstrip(), ""]
    for group, title in settings.GROUP_TITLES.items():
        lines.append(f"# --- {title}")
        for setting in settings.SETTINGS:
            if setting.group != group:
                continue
            lines.append(f"# {setting.meaning}")
            if setting.name in chosen:
                lines.append(f"{setting.name}={quote(values[setting.name])}")
            else:
                lines.append(f"# {setting.name}={quote(setting.default)}")
        lines.append("")
    return "\n".join(lines)


EXAMPLE_HEADER = """\
# torchkiln settings. `invoke env` writes .env from this list and the host's facts.
# Precedence: command-line flag > process environment > .env > the defaults shown here.
# Uncomment a line to change it; `invoke doctor` checks the result."""


def render_example() -> str:
    """Render env.example: every setting with its default, commented out."""
    return render({}, (), EXAMPLE_HEADER)


def holds_secret(text: str) -> bool:
    """Tell whether .env text holds a credential: a non-empty value of a setting named like
    *TOKEN*, *PASSWORD* or *SECRET*, or a URL with a password (comments do not count)."""
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # A line nobody can read may still hold a password: keep such a file private.
            if "@" in binding.original.string or _SECRET_NAME.search(binding.original.string):
                return True
            continue
        if binding.key is None or not binding.value:
            continue
        if _SECRET_NAME.search(binding.key) or secret_value(binding.value):
            return True
    return False


def secret_value(value: str) -> bool:
    """Tell whether a value is a URL holding a password."""
    value = value.strip()
    if "://" not in value:
        return False
    try:
        schemes = (value.partition("://")[0].lower(),)  # any scheme: only the password counts
        return urls.parse("URL", value, schemes=schemes, attributes=True).has_password
    except UserError:
        # Unparsable, but may hold user:password@ or a token (ccache's |bearer-token=…): secret.
        return "@" in value or bool(re.search(r"token|secret|passw", value, re.IGNORECASE))


def exposed_secret(file: Path) -> bool:
    """Tell whether .env holds a credential and others may read it (group or world bits)."""
    try:
        readable = file.stat().st_mode & 0o077
        return bool(readable) and holds_secret(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False


def keep_private(file: Path) -> str:
    """Make a .env that holds a credential readable by its owner only; say so ('' when there
    was nothing to do, or the file is not ours to change)."""
    if not exposed_secret(file):
        return ""
    mode = file.stat().st_mode & 0o777
    try:
        file.chmod(PRIVATE)
    except OSError:
        return (
            f"warning: {file.name} holds a password and is readable by others "
            f"({mode:o}); run chmod 600 {file.name}"
        )
    return (
        f"note: {file.name} holds a password: made it readable by you only (mode {mode:o} -> 600)"
    )


def backup_name(file: Path, now: float | None = None) -> Path:
    """Name a free backup path such as .env.20261126-031000 beside the file."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    candidate = file.with_name(f"{file.name}.{stamp}")
    counter = 1
    while candidate.exists():
        candidate = file.with_name(f"{file.name}.{stamp}-{counter}")
        counter += 1
    return candidate


def write_atomic(file: Path, text: str, mode: int = 0o644) -> None:
    """Write a file through a temporary sibling and a rename, so it is never half-written."""
    temporary = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, file)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


PRIVATE = 0o600


def write(file: Path, text: str, force: bool, now: float | None = None) -> Path | None:
    """Write .env (0600 when it holds a credential, or when the file it replaces was private);
    with force keep the old file as a timestamped backup, which is returned, with the old
    file's mode from its first byte on. Filesystem errors are one line naming the path."""
    backup = None
    mode = PRIVATE if holds_secret(text) else 0o644
    try:
        if file.exists() or file.is_symlink():
            if not force:
                raise FileExistsError(file)
            if not file.is_file():
                raise UserError(
                    f"{file} is not a regular file; move it away, then run invoke env again"
                )
            old_mode = file.stat().st_mode & 0o777
            if not old_mode & 0o077:
                mode = PRIVATE  # a private file stays private
            backup = backup_name(file, now)
            # Created private, so a secret in the old file is never readable by others.
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(file.read_bytes())
            backup.chmod(old_mode)
        write_atomic(file, text, mode)
    except (PermissionError, OSError) as error:
        if isinstance(error, FileExistsError):
            raise
        raise UserError(
            f"cannot write {file} ({error.strerror or error}); make the checkout writable for "
            f"you, or run from a copy you own"
        ) from None
    return backup

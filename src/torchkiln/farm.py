"""`invoke farm up|join|status|down`: the build farm (sccache-dist) as Compose services, its
tokens, and the preflight that refuses a farm that is down or a token it refuses, in one line,
before any compile.

The tokens are files under the checkout's state folder (.torchkiln/farm/, 0600): `jwt-key`, the
scheduler's key that servers sign their tokens with, and `client-token`, the token build steps
present. They reach containers as read-only bind mounts and builds as BuildKit secrets; no image,
history, log or inspect output holds them. Decisions are pure functions; `docker` and HTTP calls
are at the edge, each with a timeout.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import struct
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchkiln import compose, envfile, estimate, hostfacts, sccache, settings, urls
from torchkiln.errors import UserError

PROFILE = "farm"
SCHEDULER, SERVER, WORKER = "farm-scheduler", "farm-server", "farm-worker"
KEY_FILE = "jwt-key"
SCHEDULER_PORT = 10600
SERVER_PORT = 10501
TIMEOUT = 5
# One line per compile a server finished (its log at sccache_dist::build=debug, compose.yaml).
_FINISHED = re.compile(r"sccache_dist::build\] Returning result")
_SERVER_LINE = re.compile(r"torchkiln-farm: server (\S+), scheduler")


@dataclass(frozen=True)
class Status:
    """The scheduler's own status (its API's bincode: three little-endian u64)."""

    servers: int
    cpus: int
    in_progress: int


def farm_dir(root: Path) -> Path:
    return root / compose.STATE_DIR / sccache.FARM_DIR


def _not_an_option(make: Callable[[], str]) -> str:
    """A value of make() that does not begin with '-' (1 in 64 base64url values does), so no
    command line that is given it takes it for an option."""
    while (value := make()).startswith("-"):
        pass
    return value


def new_tokens() -> dict[str, str]:
    """A JWT key as sccache-dist makes one (32 random bytes, base64url without padding) and a
    client token, neither beginning with '-'."""
    key = _not_an_option(
        lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    )
    return {
        KEY_FILE: key,
        sccache.CLIENT_TOKEN_FILE: _not_an_option(lambda: secrets.token_urlsafe(32)),
    }


def write_secret(file: Path, text: str) -> None:
    """Write a token file 0600 (created so, never readable by others for a moment)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(file.parent, 0o700)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def ensure_tokens(root: Path) -> list[str]:
    """Write the tokens that are missing (never replace one: servers and clients use them);
    return the names written."""
    written = []
    for name, value in new_tokens().items():
        file = farm_dir(root) / name
        if not file.exists():
            write_secret(file, value)
            written.append(name)
    return written


def copy_tokens(root: Path, key_file: str, token_file: str) -> None:
    """`farm join`: take the farm's JWT key and client token from files the first machine
    wrote (copied over by the user), into this checkout's state folder, 0600."""
    for source, name in ((key_file, KEY_FILE), (token_file, sccache.CLIENT_TOKEN_FILE)):
        path = Path(source).expanduser()
        try:
            text = path.read_text("utf-8").strip()
        except OSError as error:
            raise UserError(
                f"farm join: cannot read {path} ({error.strerror}); copy .torchkiln/farm/{name} "
                f"from the machine that ran invoke farm up"
            ) from None
        if not text:
            raise UserError(f"farm join: {path} is empty; copy .torchkiln/farm/{name} again")
        if path.resolve() != (farm_dir(root) / name).resolve():
            write_secret(farm_dir(root) / name, text)


def parse_status(body: bytes) -> Status:
    """Read the scheduler's status answer."""
    if len(body) < 24:
        raise ValueError(f"a status of {len(body)} bytes, not 24")
    return Status(*struct.unpack("<QQQ", body[:24]))


def _request(url: str, token: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def judge_token(code: int) -> str:
    """What the scheduler's answer to an empty job request says of the token ('' when it took
    it: it then refuses the empty body, 400)."""
    if code == 401:
        return "refuses BUILD_FARM_TOKEN (401)"
    if code != 400:
        return f"answered {code} to a job request, not as an sccache-dist scheduler"
    return ""


def preflight(farm: str, token: str) -> Status:
    """Check, in seconds, that the farm answers and takes the token; one line otherwise."""
    if not token:
        raise UserError(
            f"BUILD_FARM={farm} is set but there is no client token; run invoke farm join "
            f"--url {farm} (or set BUILD_FARM_TOKEN), or empty BUILD_FARM to build on this "
            f"machine only"
        )
    fix = "start it (invoke farm up) or empty BUILD_FARM to build on this machine only"
    try:
        code, body = _request(f"{farm}/api/v1/scheduler/status", token)
        status = parse_status(body) if code == 200 else None
        job, _ = _request(f"{farm}/api/v1/scheduler/alloc_job", token, "POST")
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        message = f"the build farm BUILD_FARM={farm} does not answer ({reason}); {fix}"
        raise UserError(message) from None
    if status is None:
        raise UserError(f"the build farm BUILD_FARM={farm} answered {code} for its status; {fix}")
    refused = judge_token(job)
    if refused:
        raise UserError(
            f"the build farm BUILD_FARM={farm} {refused}; copy .torchkiln/farm/client-token "
            f"from the machine that ran invoke farm up "
            f"(invoke farm join --url {farm} --token-file …)"
        )
    if status.servers == 0:
        raise UserError(f"the build farm BUILD_FARM={farm} has no build server; {fix}")
    return status


def compile_preflight(
    values: Mapping[str, str], root: Path, cpus: int = 0, memory_bytes: int = 0
) -> list[str]:
    """What a build's compile steps will use, checked in seconds before them: the line for an
    old CCACHE_REMOTE, a warning for a compile cache that does not answer (sccache then compiles
    with its local cache: it fails nothing), and the farm's `check` (UserError in one line)."""
    lines = list(filter(None, [sccache.migration_note(values)]))
    name, url = sccache.cache_setting(values)
    problem = hostfacts.cache_server_problem(url)
    if problem:
        lines.append(f"warning: {name}: {problem}; building with the local cache only")
    return lines + check(values, root, cpus, memory_bytes)


def check(values: Mapping[str, str], root: Path, cpus: int = 0, memory_bytes: int = 0) -> list[str]:
    """The preflight of a build: [] without BUILD_FARM, else the farm's line and what it makes of
    the estimate (or UserError, in one line, before any compile)."""
    farm = values.get("BUILD_FARM", "").strip().rstrip("/")
    if not farm:
        return []
    status = preflight(farm, sccache.farm_token(values, root, compose.STATE_DIR))
    lines = [estimate_line(status, farm)]
    if cpus and values.get("BUILD_MODE") == "source":
        lines.append(divided_estimate(values, cpus, memory_bytes, status.cpus))
    return lines


def compile_hours(core_hours: float, jobs: int, farm_cores: int) -> float:
    """Wall hours of a compile of core_hours on this machine's jobs plus the farm's cores."""
    return core_hours / max(1, jobs + farm_cores)


def divided_estimate(values: Mapping[str, str], cpus: int, memory_bytes: int, cores: int) -> str:
    """The source build's compile part (the estimate's core-hours) on this machine's jobs and
    the farm's cores; codegen, downloads and links stay on this machine."""
    jobs = estimate.parallel_jobs(values, cpus, memory_bytes)
    cuda = settings.compiles_cuda(values)
    low, high = estimate.arch_units(values["CCA"], cuda)
    here = f"{estimate.range_text(low / jobs, high / jobs)} on this machine's {jobs} jobs"
    there = estimate.range_text(compile_hours(low, jobs, cores), compile_hours(high, jobs, cores))
    return (
        f"             with the farm: the compile part ({low:.0f}-{high:.0f} core-hours) takes "
        f"{there} on {jobs} jobs + {cores} farm cores instead of {here}; code generation, "
        f"downloads and links stay here ({estimate.SERIAL_HOURS[0]:.1f}-"
        f"{estimate.SERIAL_HOURS[1]:.1f} h of the estimate)"
    )


def estimate_line(status: Status, farm: str) -> str:
    """The line before a build that says what the farm adds."""
    return (
        f"build farm:  {farm}: {status.servers} server{'s' if status.servers != 1 else ''}, "
        f"{status.cpus} cores, {status.in_progress} jobs in progress"
    )


def bridge_gateway() -> str:
    """The docker0 bridge's address on this host (where build steps reach published ports)."""
    found = subprocess.run(
        [
            "docker",
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return found.stdout.strip() or "172.17.0.1"


def env_lines(values: Mapping[str, str | None], farm: str) -> tuple[str, str | None]:
    """The .env text with BUILD_FARM=farm appended (nothing else changes), or why not."""
    current = (values.get("BUILD_FARM") or "").strip().rstrip("/")
    if current == farm:
        return "", None
    if current:
        return "", (
            f"note: .env keeps BUILD_FARM={current}; set it to {farm} to build through this farm"
        )
    return f"BUILD_FARM={envfile.quote(farm)}\n", None


def record_farm(root: Path, farm: str) -> str:
    """Append BUILD_FARM to .env (the user's lines all stay); say what was done."""
    file = envfile.path(root)
    values = envfile.read(file) if file.exists() else {}
    line, note = env_lines(values, farm)
    if note:
        return note
    if line:
        text = file.read_text("utf-8") if file.exists() else ""
        envfile.write_atomic(file, text + ("" if text.endswith("\n") or not text else "\n") + line)
        return f"added BUILD_FARM={farm} to .env: every build step now compiles through the farm"
    return f".env already has BUILD_FARM={farm}"


def up_command(services: Sequence[str]) -> list[str]:
    return ["docker", "compose", "--profile", PROFILE, "up", "--detach", "--build", *services]


def down_command(services: Sequence[str]) -> list[str]:
    return ["docker", "compose", "--profile", PROFILE, "rm", "--stop", "--force", *services]


def check_join_url(url: str) -> str:
    """The scheduler URL `farm join` takes, normalised (http(s)://HOST:PORT)."""
    sccache.check_farm("farm join --url URL", url)
    parsed = urls.parse("farm join --url URL", url, form="http://HOST:10600")
    return parsed.text().rstrip("/")


def completed(logs: str) -> dict[str, int]:
    """Each of this machine's servers (its address) and the compiles it finished, from the
    servers' logs (`docker compose logs`, lines prefixed `service-1  | `)."""
    counts: dict[str, int] = {}
    names: dict[str, str] = {}
    for line in logs.splitlines():
        container, _, text = line.partition("|")
        container = container.strip()
        found = _SERVER_LINE.search(text)
        if found:
            names[container] = found[1]
            counts.setdefault(found[1], 0)
        elif _FINISHED.search(text):
            address = names.get(container, container)
            counts[address] = counts.get(address, 0) + 1
    return counts


def _compose(root: Path, command: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """Run a Compose command in the checkout (its .env names the files and project)."""
    result = subprocess.run(
        list(command),
        cwd=root,
        env={**os.environ, **compose.build_secrets({}), **(env or {})},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise UserError(f"{' '.join(command[:5])} … failed: {' / '.join(tail)}")
    return result.stdout + result.stderr


def up(root: Path, values: Mapping[str, str]) -> list[str]:
    """Start a scheduler and this machine's build server; write the tokens and BUILD_FARM."""
    said = [f"wrote .torchkiln/farm/{name} (0600)" for name in ensure_tokens(root)]
    _compose(root, up_command([SCHEDULER, SERVER]))
    farm = f"http://{bridge_gateway()}:{values.get('FARM_SCHEDULER_PORT') or SCHEDULER_PORT}"
    said.append(record_farm(root, farm))
    said.append(
        f"farm up: scheduler on port {SCHEDULER_PORT}, a build server on {SERVER_PORT}; other "
        f"machines join with: invoke farm join --url "
        f"http://<this machine's address>:{SCHEDULER_PORT} --key-file jwt-key "
        f"--token-file client-token (copies of .torchkiln/farm/)"
    )
    return said


def join(root: Path, url: str, key_file: str, token_file: str, port: int, advertise: str) -> str:
    """Start a build server here for the farm at url."""
    farm = check_join_url(url)
    copy_tokens(root, key_file, token_file)
    env = {"BUILD_FARM": farm, "FARM_SERVER_PORT": str(port), "FARM_ADVERTISE": advertise}
    _compose(root, up_command([WORKER]), env)
    note = record_farm(root, farm)
    return f"farm join: a build server on port {port} works for {farm}; {note}"


def status(root: Path, values: Mapping[str, str]) -> list[str]:
    """The farm's servers, cores and jobs in progress, and what this machine's servers did."""
    farm = values.get("BUILD_FARM", "").strip().rstrip("/")
    if not farm:
        raise UserError("BUILD_FARM is not set; run invoke farm up, or invoke farm join --url URL")
    token = sccache.farm_token(values, root, compose.STATE_DIR)
    found = preflight(farm, token)
    lines = [estimate_line(found, farm).replace("build farm:  ", "farm: ", 1)]
    logs = subprocess.run(
        ["docker", "compose", "--profile", PROFILE, "logs", "--no-color", SERVER, WORKER],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for address, count in sorted(completed(logs).items()):
        lines.append(f"  server {address} (this machine): {count} compiles completed")
    return lines


def down(root: Path) -> str:
    """Stop this machine's part of the farm (the tokens stay, for the next up)."""
    _compose(root, down_command([SCHEDULER, SERVER, WORKER]))
    return "farm down: this machine's scheduler and servers are stopped (tokens kept)"


@dataclass(frozen=True)
class JoinOptions:
    """`invoke farm join --url URL`'s options (the others take none)."""

    url: str = ""
    key_file: str = ""
    token_file: str = ""
    port: int = SERVER_PORT
    address: str = ""


def run_action(root: Path, action: str, values: Mapping[str, str], given: JoinOptions) -> str:
    """`invoke farm ACTION`: the text to print; UserError for a refusal."""
    if action != "join" and given != JoinOptions():
        raise UserError(f"farm {action} takes no URL or options; only farm join --url URL does")
    if action == "up":
        return "\n".join(up(root, values))
    if action == "join":
        if not given.url:
            raise UserError(
                "farm join needs the farm's scheduler: invoke farm join --url http://HOST:10600"
            )
        here = farm_dir(root)
        keys = given.key_file or str(here / KEY_FILE)
        token = given.token_file or str(here / sccache.CLIENT_TOKEN_FILE)
        return join(root, given.url, keys, token, given.port, given.address)
    if action == "status":
        return "\n".join(status(root, values))
    if action == "down":
        return down(root)
    raise UserError(
        f"farm action '{action}' is not one of up, join, status, down; "
        f"invoke --help farm shows them"
    )

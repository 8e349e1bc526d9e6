"""The indexes a build downloads from, probed from the host in seconds: does each name resolve,
does TLS verify, and does the torch index hold the wanted torch for the image's Python?

`torch_index` and `judge` are pure; `probe` and `index_rows` are the thin edge (one HTTPS
request per index, the simple API's JSON where the index speaks it, else its HTML page).
"""

from __future__ import annotations

import base64
import json
import platform
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from torchkiln import checkrows, urls
from torchkiln.checkrows import Row

# The build scripts name PyTorch's own wheel index (/cpu, /cuXYZ per CUDA minor); read from there.
NET_SH = Path(__file__).resolve().parents[2] / "docker" / "scripts" / "net.sh"
PROBE_TIMEOUT_S = 20
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_WHEEL = re.compile(r"([a-z0-9_]+)-([^-]+)-([^-]+)-[^-]+-([^-]+)\.whl$")
# What the build downloads from the torch index (docker/scripts/download-wheels.sh).
PROJECTS = {"torch": "PYTORCH_VERSION", "torchvision": "TORCHVISION_VERSION"}
PROJECTS["torchaudio"] = "TORCHAUDIO_VERSION"


@dataclass(frozen=True)
class TorchIndex:
    """Where the build takes torch from, and the setting that decides it."""

    url: str
    setting: str  # TORCH_INDEX_URL or PIP_INDEX_URL
    how: str  # the setting's value, or what its empty value means
    required: bool  # the build downloads torch from it (BUILD_MODE wheels, torch-wheel)


@dataclass(frozen=True)
class Answer:
    """What an index said about torch: `problem` when it could not be asked."""

    problem: str = ""
    kind: str = ""  # resolve | tls | unreachable | http
    # Each project's versions for this Python and machine, with a wheel's size (0: unknown).
    versions: dict[str, dict[str, int]] = field(default_factory=dict)


@cache
def pytorch_index() -> str:
    """PyTorch's own wheel index as the build scripts name it ('' when they cannot be read)."""
    try:
        text = NET_SH.read_text(encoding="utf-8")
    except OSError:
        return ""
    match = re.search(r"--index-url (https://\S+)/cpu\b", text)
    return match[1] if match else ""


def torch_index(values: Mapping[str, str], default_index: str) -> TorchIndex:
    """The index torch's wheels come from, as docker/scripts/net.sh picks it."""
    required = values["BUILD_MODE"] in ("wheels", "torch-wheel")
    if values.get("TORCH_INDEX_URL"):
        url = values["TORCH_INDEX_URL"]
        return TorchIndex(url, "TORCH_INDEX_URL", f"TORCH_INDEX_URL={url}", required)
    if values["CUDA_FROM"] == "pypi":
        url = values.get("PIP_INDEX_URL") or default_index
        how = "CUDA_FROM=pypi takes torch from the Python index"
        return TorchIndex(url, "PIP_INDEX_URL", how, required)
    if values["CUDA_FROM"] == "none":
        how = "TORCH_INDEX_URL is empty: PyTorch's CPU index"
        return TorchIndex(f"{pytorch_index()}/cpu", "TORCH_INDEX_URL", how, required)
    cuda = "".join(values["CUDA_VERSION"].split(".")[:2])
    how = f"TORCH_INDEX_URL is empty: PyTorch's index for CUDA {values['CUDA_VERSION']}"
    return TorchIndex(f"{pytorch_index()}/cu{cuda}", "TORCH_INDEX_URL", how, required)


def wheel_versions(
    project: str, filenames: Mapping[str, int], python: str, machine: str
) -> dict[str, int]:
    """A project's versions with a wheel for this Python (3.12 → cp312) and machine (x86_64)."""
    tag = "cp" + python.replace(".", "")
    found: dict[str, int] = {}
    for name, size in filenames.items():
        match = _WHEEL.search(urllib.parse.unquote(name))
        # As pip takes them: this CPython's tag or a pure-Python one, this machine's or any.
        pythons = set(match[3].split(".")) if match else set()
        if (
            match
            and match[1] == project
            and pythons & {tag, "py3", "py" + python.replace(".", "")}
            and (match[4] == "any" or match[4].endswith(machine))
        ):
            found.setdefault(match[2], size)
    return found


def missing(answer: Answer, wanted: Mapping[str, str]) -> list[str]:
    """The wanted project==version the answer lacks."""
    return [
        f"{project}=={version}"
        for project, version in wanted.items()
        if not has_version(answer.versions.get(project, {}), version)
    ]


def has_version(versions: Mapping[str, int], wanted: str) -> str:
    """The listed version that is `wanted` (2.14.1 is also 2.14.1+cpu), or ''."""
    return next((v for v in versions if v == wanted or v.startswith(wanted + "+")), "")


def judge(
    index: TorchIndex,
    answer: Answer,
    python_index: str,
    python_answer: Answer,
    wanted: Mapping[str, str],
    python: str,
) -> Row:
    """Judge the torch index (`wanted`: project → version, torch first): ok, or why the build
    would fail at its download with the setting to change and a value that works here (the
    Python index, where it has them all)."""
    check = f"index ({index.setting})"
    shown = ", ".join(f"{project} {version}" for project, version in wanted.items())
    lacking = missing(answer, wanted)
    if not answer.problem and not lacking:
        return Row(check, "ok", f"{urls.shown(index.url)} has {shown} for Python {python}")
    if answer.problem:
        reason = answer.problem
    else:
        first = lacking[0].split("==")[0]
        listed = ", ".join(sorted(answer.versions.get(first, {}), reverse=True)[:5]) or "none"
        reason = (
            f"has no wheel of {', '.join(lacking)} for Python {python} ({first} there: {listed})"
        )
    detail = f"{urls.shown(index.url)} {reason} ({index.how})"
    if not index.required:
        return Row(check, "warn", detail + "; the build reads torch's requirements there")
    # An index that does not answer while no other does either: the host may only lack the
    # build's proxy, so no proof; a name that does not resolve, TLS or HTTP refusals are.
    # An index that refuses the credentials given here is no proof either: the build may have
    # others (a token only CI holds).
    unproven = answer.kind == "unreachable" and python_answer.problem
    status = "warn" if unproven or answer.problem.startswith("answers HTTP 40") else "error"
    torch = python_answer.versions.get("torch", {})
    found = has_version(torch, wanted["torch"])
    if (
        python_index != index.url
        and not python_answer.problem
        and not missing(python_answer, wanted)
    ):
        said = f", torch a {torch[found] / 1e9:.1f} GB wheel" if torch.get(found) else ""
        fix = (
            f"take them from the Python index, which has {shown} for Python {python}{said} (a "
            f"CUDA build that runs on the CPU too; its NVIDIA wheels come with it): "
            f"{checkrows.append_to_env([f'TORCH_INDEX_URL={urls.shown(python_index)}'])}"
        )
    else:
        fix = (
            f"set {index.setting} to an index you can reach that has {shown} (a mirror of "
            f"{urls.shown(index.url)}), or build from a folder of wheels: --wheelhouse DIR"
        )
    return Row(check, status, detail + "; the build would fail at its torch download", fix)


def without_credentials(url: str) -> str:
    """The URL without its user and password; host, port and IPv6 brackets as they were."""
    parsed = urllib.parse.urlsplit(url)
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: where a password given for `url` may go."""
    parsed = urllib.parse.urlsplit(url)
    default = {"https": 443, "http": 80}.get(parsed.scheme)
    return parsed.scheme, (parsed.hostname or "").lower(), parsed.port or default


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects; the index's credentials go along only to the index's own origin
    (a redirect to a file host or CDN gets none)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and origin(new.full_url) == origin(req.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


def fetch(url: str, cafile: str, limit: int = 0) -> tuple[str, bytes]:
    """GET a page (the simple API's JSON where the index speaks it) or a file (at most `limit`
    bytes: more is a ValueError); its content type and body. A password in the URL goes as
    Basic authorization to that origin only, never along a redirect to another host."""
    parsed = urllib.parse.urlsplit(url)
    auth = ""
    if parsed.password is not None:
        token = f"{urllib.parse.unquote(parsed.username or '')}:"
        token += urllib.parse.unquote(parsed.password)
        auth = "Basic " + base64.b64encode(token.encode()).decode()
        url = without_credentials(url)
    context = ssl.create_default_context(cafile=cafile or None)
    request = urllib.request.Request(url, headers={"Accept": f"{_SIMPLE_JSON}, text/html;q=0.1"})
    if auth:
        request.add_unredirected_header("Authorization", auth)
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _SameOriginAuth
    )
    with opener.open(request, timeout=PROBE_TIMEOUT_S) as response:
        body = response.read(limit + 1) if limit else response.read()
        if limit and len(body) > limit:
            raise ValueError(f"{url} is larger than {limit} bytes")
        return response.headers.get("Content-Type", ""), body


def probe(
    index_url: str,
    cafile: str,
    python: str,
    projects: Sequence[str],
    machine: str = "",
    proxied: bool = False,
) -> Answer:
    """Ask an index for each project's page: name resolution (here, unless a proxy resolves
    it: `proxied`), TLS, then its wheels."""
    host = urllib.parse.urlsplit(index_url).hostname or ""
    try:
        if not proxied:
            socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return Answer(f"does not resolve: {host} has no address from here", "resolve")
    versions: dict[str, dict[str, int]] = {}
    for project in projects:
        page = _page(index_url, project, cafile)
        if isinstance(page, Answer):
            return page
        versions[project] = wheel_versions(project, page, python, machine or platform.machine())
    return Answer(versions=versions)


def _page(index_url: str, project: str, cafile: str) -> Answer | dict[str, int]:
    try:
        kind, body = fetch(f"{index_url.rstrip('/')}/{project}/", cafile)
    except ssl.SSLCertVerificationError as error:
        return Answer(f"fails TLS verification ({error.verify_message})", "tls")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return {}
        return Answer(f"answers HTTP {error.code} for {project}'s page", "http")
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return Answer(f"fails TLS verification ({reason.verify_message})", "tls")
        return Answer(f"does not answer from here ({reason})", "unreachable")
    files: dict[str, int] = {}
    if _SIMPLE_JSON in kind:
        try:
            for item in simple_files(body):
                files[str(item.get("filename", ""))] = int(item.get("size") or 0)
        except (ValueError, TypeError) as error:
            return Answer(f"answers {project}'s page with {error}", "http")
    else:
        for name in re.findall(r'href="([^"#]+\.whl)', body.decode("utf-8", "replace")):
            files[name.rsplit("/", 1)[-1]] = 0
    return files


def simple_files(body: bytes) -> list[dict]:
    """The files of a simple API JSON page; ValueError naming what is wrong with it."""
    try:
        page = json.loads(body)
    except ValueError as error:  # not JSON, or not UTF-8
        raise ValueError(f"JSON that does not parse ({error})") from None
    files = page.get("files", []) if isinstance(page, dict) else None
    if not isinstance(files, list) or not all(isinstance(item, dict) for item in files):
        raise ValueError("JSON without the simple API's list of files")
    return files


def with_token(url: str, values: Mapping[str, str]) -> str:
    """PIP_INDEX_URL with PIP_INDEX_TOKEN as its password (user __token__ unless it names one),
    as docker/scripts/net.sh gives it to pip; other URLs as they are."""
    token = values.get("PIP_INDEX_TOKEN", "")
    if not token or url != values.get("PIP_INDEX_URL"):
        return url
    from dataclasses import replace

    from torchkiln import compose

    parsed = compose.index_url(url)
    if parsed.password:
        return url
    return replace(parsed, user=parsed.user or "__token__", password=token).text()


def index_rows(
    values: Mapping[str, str], cafile: str, default_index: str, wheelhouse: str = ""
) -> list[Row]:
    """Probe the torch index and the Python index at once, and judge the torch index (no row
    for a build from a wheelhouse, which downloads nothing)."""
    if wheelhouse:
        return []
    index = torch_index(values, default_index)
    python_index = values.get("PIP_INDEX_URL") or default_index
    if not index.url.startswith("https://") or not python_index:
        return []
    python = values["PYTHON_VERSION"]
    # Only torch where the build reads requirements there; all it downloads otherwise.
    wanted = {
        project: values[setting]
        for project, setting in PROJECTS.items()
        if values.get(setting) and (project == "torch" or index.required)
    }
    proxied = bool(urllib.request.getproxies().get("https"))

    def ask(url: str) -> Answer:  # the Python index with PIP_INDEX_TOKEN, as the build's pip
        return probe(with_token(url, values), cafile, python, list(wanted), "", proxied)

    asked = list(dict.fromkeys([index.url, python_index]))  # once each: they may be one
    with ThreadPoolExecutor(max_workers=len(asked)) as pool:
        answers = dict(zip(asked, pool.map(ask, asked), strict=True))
    return [judge(index, answers[index.url], python_index, answers[python_index], wanted, python)]

"""Facts read off the host: the user, the time zone, the GPUs. Thin functions with effects."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torchkiln import gpu


@dataclass(frozen=True)
class HostUser:
    """Who runs the tasks on the host."""

    uid: int
    gid: int
    user: str
    group: str


def host_user() -> HostUser:
    """Read the invoking user's ids and names (names fall back to ids when not in the db)."""
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = os.environ.get("USER", f"u{uid}")
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = f"g{gid}"
    return HostUser(uid, gid, user, group)


def host_timezone(etc: Path = Path("/etc")) -> str:
    """Name the host's time zone from /etc/timezone or the /etc/localtime link, else UTC."""
    try:
        name = (etc / "timezone").read_text(encoding="utf-8").strip()
        if name:
            return name
    except OSError:
        pass
    try:
        target = os.readlink(etc / "localtime")
    except OSError:
        return "UTC"
    marker = "zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else "UTC"


def run_probe(command: list[str], timeout: float = 15) -> tuple[int, str]:
    """Run a probe command; return (exit code, stdout), 127 when it is not installed."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, ""
    except subprocess.TimeoutExpired:
        return 124, ""
    return result.returncode, result.stdout


def cache_server_problem(url: str, timeout: float = 3) -> str:
    """Say why the compile cache server of a COMPILE_CACHE URL does not answer ('' when it does,
    or when there is none, or it is a cloud bucket). Redis must answer PING; others, a
    connection."""
    from torchkiln import sccache
    from torchkiln.errors import UserError

    if not url:
        return ""
    try:  # the settings model's parser: a password with '/' or '#' is no port
        parsed = sccache.parse_compile_cache(url)
    except UserError as error:
        return str(error)
    if parsed.scheme in ("s3", "gs"):
        return ""
    default = 11211 if parsed.scheme == "memcached" else 6379
    default = {"http": 80, "https": 443}.get(parsed.scheme.removeprefix("webdav+"), default)
    host, port = parsed.host.strip("[]"), parsed.port or default
    where = f"{parsed.scheme}://{parsed.host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            if parsed.scheme != "redis":
                return ""
            connection.sendall(b"PING\r\n")
            answer = connection.recv(64)
    except OSError as error:
        return f"{where} does not answer ({error.strerror or error})"
    # +PONG, or -NOAUTH when a password is needed: either way a Redis server is there.
    if answer.startswith((b"+PONG", b"-NOAUTH", b"-ERR")):
        return ""
    return f"{where} answered, but not as Redis ({answer[:20]!r})"


def gpu_compute_capabilities() -> str:
    """Return the host GPUs' unique compute capabilities as a CCA, '' when none is found."""
    code, out = run_probe(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    return gpu.detected_cca(out) if code == 0 else ""


def gpu_driver_version() -> str:
    """Return the NVIDIA driver version, '' when no driver answers."""
    code, out = run_probe(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if code == 0 and lines else ""


# --- CA bundles and TLS: what the host trusts, and whether the network inspects TLS -----------

# The variables pip (PIP_CERT), requests, OpenSSL and curl take a CA bundle from: a host that
# works behind a TLS-inspecting proxy usually sets one of them to a bundle with the proxy's CA.
CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
# pip's config sections that may set `cert`, lowest priority first (pip.pypa.io, Configuration).
PIP_CERT_SECTIONS = ("global", "download", "install", "wheel")


@dataclass(frozen=True)
class CABundle:
    """A CA bundle the host uses, and where that was said."""

    source: str  # e.g. "PIP_CERT", "pip's config /etc/pip.conf", "the system's"
    path: str


def pip_config_files(environ: Mapping[str, str]) -> list[Path]:
    """pip's configuration files, lowest priority first, as pip reads them on Linux."""
    home = Path(environ.get("HOME") or Path.home())
    config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    config_dirs = (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")
    files = [Path(directory) / "pip" / "pip.conf" for directory in reversed(config_dirs)]
    files += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf", config_home / "pip" / "pip.conf"]
    if environ.get("VIRTUAL_ENV"):
        files.append(Path(environ["VIRTUAL_ENV"]) / "pip.conf")
    if environ.get("PIP_CONFIG_FILE") and environ["PIP_CONFIG_FILE"] != os.devnull:
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return files


def pip_config_cert(files: list[Path]) -> CABundle | None:
    """The `cert` pip's configuration sets (the highest-priority file and section wins)."""
    import configparser

    found = None
    for file in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(file, encoding="utf-8")
        except (OSError, configparser.Error, UnicodeDecodeError):
            continue
        for section in PIP_CERT_SECTIONS:
            if parser.has_option(section, "cert"):
                where = f"pip's config {file} ({section}.cert)"
                found = CABundle(where, parser.get(section, "cert"))
    return found


def system_ca_bundle() -> str:
    """The system's CA bundle as OpenSSL finds it ('' when there is none)."""
    import ssl

    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    return ""


def fresh_image_ca_bundle() -> str:
    """A bundle of the CAs a freshly installed image trusts (Mozilla's list, which Debian's and
    Ubuntu's ca-certificates ship): certifi's copy, which the docker SDK's requests brings."""
    try:
        import certifi
    except ImportError:
        return ""
    return certifi.where()


def host_ca_bundles(environ: Mapping[str, str]) -> list[CABundle]:
    """The CA bundles the host's tools are told to use (variables, pip's config), readable
    files only, each once."""
    found = [CABundle(name, environ[name]) for name in CA_VARIABLES if environ.get(name)]
    pip_cert = environ.get("PIP_CERT") is None and pip_config_cert(pip_config_files(environ))
    if pip_cert:
        found.append(pip_cert)
    unique: dict[str, CABundle] = {}
    for bundle in found:
        path = os.path.realpath(os.path.expanduser(bundle.path))
        if os.path.isfile(path) and os.access(path, os.R_OK):
            unique.setdefault(path, CABundle(bundle.source, path))
    return list(unique.values())


def default_index_url() -> str:
    """pip's own default index ('' when pip is not importable here)."""
    try:
        from pip._internal.models.index import PyPI
    except ImportError:
        return ""
    return PyPI.simple_url


@dataclass(frozen=True)
class TLSVerdict:
    """What a TLS handshake with a server said: ok, untrusted (the chain did not verify with
    the bundle given) or unreachable (no answer, so nothing is known)."""

    status: str
    reason: str = ""


def tls_verdict(
    url: str, cafile: str, environ: Mapping[str, str], timeout: float = 5
) -> TLSVerdict:
    """Shake hands with an https URL's server (through HTTPS_PROXY as the build would, unless
    NO_PROXY names the host), verifying its chain with one CA bundle."""
    import http.client
    import ssl
    import urllib.request

    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname:
        return TLSVerdict("ok")
    host, port = parsed.hostname, parsed.port or 443
    try:
        context = ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as error:
        return TLSVerdict("untrusted", f"{cafile} holds no certificate OpenSSL reads ({error})")
    proxy = environ.get("https_proxy") or environ.get("HTTPS_PROXY") or ""
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    if proxy and no_proxy and urllib.request.proxy_bypass_environment(host, {"no": no_proxy}):
        proxy = ""
    if proxy:
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        connection = http.client.HTTPSConnection(
            proxied.hostname or "", proxied.port or 3128, timeout=timeout, context=context
        )
        connection.set_tunnel(host, port)
    else:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        connection.connect()
    except ssl.SSLCertVerificationError as error:
        return TLSVerdict("untrusted", error.verify_message or str(error))
    except (OSError, http.client.HTTPException) as error:
        return TLSVerdict("unreachable", " ".join(str(error).split())[:160] or type(error).__name__)
    finally:
        connection.close()
    return TLSVerdict("ok")


# --- base images: their distro and Python, read from the image in about a second -------------

_IMAGE_FACTS_SCRIPT = (
    "cat /etc/os-release 2>/dev/null; "
    "python3 -c 'import sys; print(\"PYTHON3=%d.%d\" % sys.version_info[:2])' 2>/dev/null; true"
)


@dataclass(frozen=True)
class ImageFacts:
    """What an image says about itself: its distro (ID and VERSION_ID of /etc/os-release) and
    the version of its python3 ('' when it has none); `error` when it could not be read."""

    image: str
    distro: str = ""
    distro_version: str = ""
    python: str = ""
    error: str = ""
    torchkiln: bool = False  # built by torchkiln (its labels): not a base image


def image_facts(image: str, timeout: float = 30) -> ImageFacts:
    """Read a local image's distro and python3 (a throw-away container with no network);
    an image that is not here is not pulled for this (error says so)."""
    inspect = ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image]
    code, labels = run_probe(inspect)
    if code != 0:
        return ImageFacts(image, error="not here")
    built_here = "io.torchkiln." in labels
    command = ["docker", "run", "--rm", "--pull", "never", "--network", "none"]
    command += ["--entrypoint", "/bin/sh", image]
    code, out = run_probe([*command, "-c", _IMAGE_FACTS_SCRIPT], timeout=timeout)
    if code != 0:
        return ImageFacts(image, error=f"docker run failed (exit {code})")
    fields = dict(
        line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#")
    )
    return ImageFacts(
        image,
        distro=fields.get("ID", "").strip('"'),
        distro_version=fields.get("VERSION_ID", "").strip('"'),
        python=fields.get("PYTHON3", ""),
        torchkiln=built_here,
    )


def local_image_names() -> list[str]:
    """The tagged images here (repository:tag), newest first."""
    code, out = run_probe(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
    if code != 0:
        return []
    return [name for name in out.split() if "<none>" not in name]

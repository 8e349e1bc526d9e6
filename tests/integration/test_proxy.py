"""A network that inspects TLS, for real: a Python index served over TLS with a CA of its own (as a
TLS-inspecting proxy re-signs every certificate with its CA), on the docker0 bridge's address,
where the host and the build steps reach it. The session wheelhouse is that index's content.

- no CA bundle anywhere: the build is refused in seconds with the --ca-bundle to add;
- the host's PIP_CERT names the proxy's CA: the build takes it by itself, says so, and works;
- files on a server the preflight does not probe, signed by another CA: the build fails inside,
  and its last line names --ca-bundle.
"""

from __future__ import annotations

import contextlib
import html
import http.server
import re
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from engines import bridge_address, free_port
from projects import assert_ok, make_project, remove_project

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

# The server stops by itself after this long, whatever happens to the test process.
SERVER_LIFETIME_S = 1800


def make_certificates(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a server certificate it signed for the address."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=torchkiln test inspecting CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", f"/CN={address}")  # fmt: skip
    (directory / "server.ext").write_text(
        f"subjectAltName=IP:{address}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", "server.pem",
            "-extfile", "server.ext")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class SimpleIndex(http.server.BaseHTTPRequestHandler):
    """A PEP 503 index of one folder of wheels: /simple/<project>/ and /files/<wheel>."""

    wheels: ClassVar[dict[str, Path]] = {}
    # Where the index says the files are: here, or another server (as PyPI's are on another host).
    files_base: ClassVar[str] = ""

    def do_GET(self) -> None:
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        if path.startswith("/files/") and path[7:] in self.wheels:
            body = self.wheels[path[7:]].read_bytes()
            self._send(body, "application/octet-stream")
            return
        parts = [part for part in path.split("/") if part]
        if parts[:1] != ["simple"] or len(parts) > 2:
            self.send_error(404)
            return
        if len(parts) == 1:
            names = sorted({normalized(name.split("-")[0]) for name in self.wheels})
            links = "".join(f'<a href="/simple/{name}/">{name}</a>\n' for name in names)
        else:
            files = [name for name in self.wheels if normalized(name.split("-")[0]) == parts[1]]
            if not files:
                self.send_error(404)
                return
            links = "".join(
                f'<a href="{self.files_base}/files/{html.escape(name)}">{html.escape(name)}</a>\n'
                for name in files
            )
        self._send(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html")

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet: pytest shows failures, not requests
        pass


@contextlib.contextmanager
def tls_server(
    directory: Path, wheels: dict[str, Path], files_base: str = ""
) -> Iterator[tuple[str, Path]]:
    """Serve the wheels as an index over TLS with a CA of its own, on the bridge's address, for
    at most SERVER_LIFETIME_S: yields (the server's https base URL, its CA file)."""
    address = bridge_address()
    directory.mkdir(parents=True, exist_ok=True)
    ca, certificate, key = make_certificates(directory, address)
    handler = type("Index", (SimpleIndex,), {"wheels": wheels, "files_base": files_base})
    server = http.server.ThreadingHTTPServer((address, free_port()), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    deadline.start()
    try:
        yield f"https://{address}:{server.server_address[1]}", ca
    finally:
        deadline.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def index_wheels(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> dict[str, Path]:
    """The session wheelhouse, plus a stand-in torchvision: BUILD_MODE=wheels installs one (the
    official CPU one lives on PyTorch's own index, and the Python index's links CUDA)."""
    extra = tmp_path_factory.mktemp("index-extra")
    stand_in_wheel(extra, "torchvision", "0.28.0")
    return {path.name: path for folder in (wheelhouse, extra) for path in folder.glob("*.whl")}


@pytest.fixture(scope="module")
def inspected_index(
    tmp_path_factory: pytest.TempPathFactory, index_wheels: dict[str, Path]
) -> Iterator[tuple[str, Path]]:
    """The index over TLS with the test's own CA: (its URL, the CA file)."""
    with tls_server(tmp_path_factory.mktemp("tls-index"), index_wheels) as (base, ca):
        yield f"{base}/simple/", ca


def stand_in_wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of that name and version, importable, with nothing in it."""
    import zipfile

    directory.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: torchkiln-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def index_project(tmp_path: Path, url: str, label: str, **values: str):
    """Official wheels (no compile, no CUDA) from the inspected index, with no CA bundle set."""
    return make_project(
        tmp_path,
        label,
        BUILD_MODE="wheels",
        CUDA_FROM="none",
        PIP_INDEX_URL=url,
        TORCH_INDEX_URL=url,
        CA_BUNDLE="",
        **values,
    )


def without_ca_settings(environ: dict[str, str]) -> dict[str, str]:
    """The host as a newcomer's: no variable naming a CA bundle, and pip's config not read."""
    names = {"PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"}
    kept = {name: value for name, value in environ.items() if name not in names}
    return {**kept, "PIP_CONFIG_FILE": "/dev/null", "XDG_CONFIG_DIRS": "/nonexistent"}


def test_no_bundle_is_refused_in_seconds_with_the_flag_to_add(tmp_path, inspected_index) -> None:
    url, _ = inspected_index
    project = index_project(tmp_path, url, "tlsno")
    project.env = without_ca_settings(project.env)
    try:
        started = time.monotonic()
        result = project.invoke("build", "--torch", "2.13.0")
        took = time.monotonic() - started
        print(f"\nrefused in {took:.1f} s")
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"error: tls: {url} presents a certificate that neither")
        assert "invoke build --ca-bundle /path/to/that-ca.pem" in lines[0]
        assert "docker compose" not in result.stdout, "nothing was built"
        doctor = project.invoke("doctor")
        assert doctor.returncode == 1
        assert re.search(r"^tls +ERROR +" + re.escape(url), doctor.stdout, re.M), doctor.stdout
    finally:
        remove_project(project)


def test_the_host_s_pip_cert_is_used_by_itself_and_the_build_works(
    tmp_path, inspected_index
) -> None:
    url, ca = inspected_index
    project = index_project(tmp_path, url, "tlspip")
    project.env = {**without_ca_settings(project.env), "PIP_CERT": str(ca)}
    try:
        output = assert_ok(project.invoke("build", "--torch", "2.13.0"))
        said = [line for line in output.splitlines() if line.startswith("note: ")]
        assert f"PIP_CERT {ca} verifies it, so builds use it as their CA secret" in "".join(said)
        assert f"(as --ca-bundle {ca})" in said[0]
        script = "python -c 'import torch, torchvision; print(torch.__version__)'"
        assert assert_ok(project.exec("train", script)).strip().startswith("2.13.0")
    finally:
        remove_project(project)


def test_a_certificate_failure_inside_the_build_ends_naming_ca_bundle(tmp_path, index_wheels):
    """The index answers with one CA and keeps its files on another server signed by another CA
    (PyPI's files are on another host too): the preflight probes the index, which the host's
    PIP_CERT verifies; the build's pip then meets the files' server."""
    with (
        tls_server(tmp_path / "files", index_wheels) as (files_base, _),
        tls_server(tmp_path / "index", index_wheels, files_base) as (index_base, index_ca),
    ):
        url = f"{index_base}/simple/"
        project = index_project(tmp_path, url, "tlssplit")
        project.env = {**without_ca_settings(project.env), "PIP_CERT": str(index_ca)}
        try:
            result = project.invoke("build", "--no-up", "--torch", "2.13.0")
            assert result.returncode == 1, result.stdout[-3000:]
            assert "CERTIFICATE_VERIFY_FAILED" in result.stdout, result.stdout[-3000:]
            last = result.stderr.strip().splitlines()[-1]
            assert last.startswith("error: docker compose build train failed (exit "), last
            assert "(the whole output is in .torchkiln/build-train.log)" in last
            assert f"with the CA bundle given ({index_ca})" in last
            assert last.endswith(
                "give its bundle with --ca-bundle FILE (or CA_BUNDLE=FILE in .env)"
            )
            log = (project.root / ".torchkiln" / "build-train.log").read_text()
            assert "CERTIFICATE_VERIFY_FAILED" in log
        finally:
            remove_project(project)

"""The index fetch over real sockets: credentials in the URL go as Basic authorization to the
index's own host and port, never along a redirect to another host; bad answers are the
index's fault in one line."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator

import pytest

from torchkiln import indexcheck


class Server:
    """A local HTTP server answering each path from `routes` and recording what it was sent."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, str]] = []  # (path, Authorization)
        self.password = ""  # an Authorization every request must carry ('' none)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.seen.append((self.path, self.headers.get("Authorization", "")))
                code, headers, body = server.routes.get(self.path, (404, {}, b""))
                if server.password and self.headers.get("Authorization") != server.password:
                    code, headers, body = 401, {}, b""
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    index, cdn = Server(), Server()
    try:
        yield index, cdn
    finally:
        index.close()
        cdn.close()


BASIC = "Basic " + base64.b64encode(b"__token__:s3cret").decode()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:p@idx:8443/simple", "https://idx:8443/simple"),
        ("https://u:p@[::1]:8443/simple", "https://[::1]:8443/simple"),
        ("https://u:p@[fe80::1]/simple", "https://[fe80::1]/simple"),
        ("https://__token__:a%40b@idx.example/simple/", "https://idx.example/simple/"),
        ("https://idx.example:444/simple", "https://idx.example:444/simple"),
    ],
)
def test_credentials_leave_the_url_with_its_port_and_brackets(url, expected):
    assert indexcheck.without_credentials(url) == expected


def test_an_index_on_its_own_port_is_asked_there_with_the_password(servers):
    index, _ = servers
    index.routes["/simple/torch/"] = (200, {"Content-Type": "text/html"}, b"<a></a>")
    url = f"http://__token__:s3cret@127.0.0.1:{index.port}/simple/torch/"
    _, body = indexcheck.fetch(url, "")
    assert body == b"<a></a>"
    assert index.seen == [("/simple/torch/", BASIC)]


def test_a_redirect_to_another_host_gets_no_password(servers):
    index, cdn = servers
    file_url = f"http://127.0.0.1:{cdn.port}/files/torch.whl"
    index.routes["/simple/torch/"] = (302, {"Location": file_url}, b"")
    cdn.routes["/files/torch.whl"] = (200, {"Content-Type": "application/octet-stream"}, b"w")
    _, body = indexcheck.fetch(f"http://__token__:s3cret@127.0.0.1:{index.port}/simple/torch/", "")
    assert body == b"w"
    assert index.seen == [("/simple/torch/", BASIC)]
    assert cdn.seen == [("/files/torch.whl", "")]


def test_a_redirect_on_the_index_itself_keeps_the_password(servers):
    index, _ = servers
    index.routes["/simple/torch"] = (301, {"Location": "/simple/torch/"}, b"")
    index.routes["/simple/torch/"] = (200, {"Content-Type": "text/html"}, b"ok")
    _, body = indexcheck.fetch(f"http://__token__:s3cret@127.0.0.1:{index.port}/simple/torch", "")
    assert body == b"ok"
    assert index.seen == [("/simple/torch", BASIC), ("/simple/torch/", BASIC)]


JSON_PAGE = {"Content-Type": "application/vnd.pypi.simple.v1+json"}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"<html>maintenance</html>", "JSON that does not parse"),
        (b"\xff\xfe", "JSON that does not parse"),
        (b"[]", "JSON without the simple API's list of files"),
        (b'{"files": 3}', "JSON without the simple API's list of files"),
        (b'{"files": ["torch.whl"]}', "JSON without the simple API's list of files"),
        (b'{"files": [{"filename": "t.whl", "size": "big"}]}', "invalid literal"),
    ],
)
def test_an_index_answering_bad_json_is_its_fault_in_one_line(servers, body, said):
    index, _ = servers
    index.routes["/simple/torch/"] = (200, JSON_PAGE, body)
    answer = indexcheck.probe(f"http://127.0.0.1:{index.port}/simple", "", "3.11", ["torch"])
    assert answer.kind == "http"
    assert answer.problem.startswith("answers torch's page with ") and said in answer.problem
    assert "\n" not in answer.problem


def test_the_cxx_check_reads_no_bad_json_either(servers):
    from torchkiln import cxxcheck

    index, _ = servers
    index.routes["/simple/torch/"] = (200, JSON_PAGE, b"[1]")
    with pytest.raises(ValueError, match="list of files"):
        cxxcheck.sdist_files(f"http://127.0.0.1:{index.port}/simple", "torch", "")


def test_the_cxx_check_asks_an_index_that_needs_the_token_with_it(servers):
    import io
    import tarfile

    from torchkiln import cxxcheck, settings

    index, _ = servers
    index.password = BASIC
    setup = b"extra_compile_args={'cxx': ['-std=c++17']}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as made:
        info = tarfile.TarInfo("ext-1.0/setup.py")
        info.size = len(setup)
        made.addfile(info, io.BytesIO(setup))
    html = {"Content-Type": "text/html"}
    index.routes["/simple/ext/"] = (200, html, b'<a href="ext-1.0.tar.gz">ext-1.0.tar.gz</a>')
    index.routes["/simple/ext/ext-1.0.tar.gz"] = (200, {}, buffer.getvalue())
    wheel = b"torch-2.13.1-cp311-cp311-manylinux_2_28_x86_64.whl"
    index.routes["/simple/torch/"] = (200, html, b'<a href="' + wheel + b'">t</a>')
    url = f"http://127.0.0.1:{index.port}/simple"
    values = settings.resolve(
        {"PIP_INDEX_URL": url, "PIP_INDEX_TOKEN": "s3cret", "CUDA_FROM": "pypi"}
        | {"PYTORCH_VERSION": "2.14.1", "PYTHON_VERSION": "3.11"}
    )
    rows = cxxcheck.gather(["ext==1.0"], {}, values, "", url)
    assert [(row.status, row.check) for row in rows] == [("error", "extensions")]
    assert "-std=c++17" in rows[0].detail and "--torch 2.13.1" in rows[0].fix
    assert "s3cret" not in rows[0].detail + rows[0].fix
    assert all(auth == BASIC for _, auth in index.seen)

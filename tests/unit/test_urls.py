"""One URL parser for COMPILE_CACHE and the index/mirror URLs: what it accepts, the normal form,
the compile cache's attributes, and that no message shows a password."""

from __future__ import annotations

import urllib.parse

import pytest

from torchkiln import hostfacts, sccache, settings, urls
from torchkiln.errors import UserError

# Passwords with every character that broke something: Compose's $, a shell's $VAR, a URL's / # @
# ? : |, spaces, both quotes, a percent sign, non-ASCII.
PASSWORDS = [
    "pa$word",
    "p/w#x",
    "a b",
    "q\"'u",
    "x@y:z",
    "p|w",
    "100%",
    "$HOME",
    "ünï",
]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("written", ["raw", "encoded"])
def test_any_password_survives_the_normal_form(password: str, written: str) -> None:
    typed = password if written == "raw" else urllib.parse.quote(password, safe="")
    if written == "raw" and password == "100%":
        typed = "100%"  # a '%' not followed by two hex digits stays literal
    value = f"redis://:{typed}@cache.example:6379/2|read-only"
    parsed = sccache.parse_compile_cache(value)
    assert (parsed.password, parsed.host, parsed.port, parsed.path) == (
        password,
        "cache.example",
        6379,
        "/2",
    )
    assert parsed.read_only
    normal = parsed.text()
    assert sccache.parse_compile_cache(normal) == parsed  # idempotent
    # Nothing Compose, python-dotenv or a shell would read specially is left.
    assert not set("$#'\" ") & set(normal.split("@")[0])
    masked = parsed.text(masked=True)
    assert masked == "redis://:****@cache.example:6379/2|read-only"


@pytest.mark.parametrize(
    ("value", "attributes"),
    [
        ("redis://h:1|read-only", (("read-only", None),)),
        ("redis://h:1|read-only=true", (("read-only", None),)),
        ("redis://h:1|read-only=false", ()),
        ("s3://bucket/pre|region=eu-west-1", (("region", "eu-west-1"),)),
        (
            "s3://b/p|endpoint=https://minio.example:9000",
            (("endpoint", "https://minio.example:9000"),),
        ),
    ],
)
def test_the_compile_caches_attributes_are_read(value: str, attributes: tuple) -> None:
    assert sccache.parse_compile_cache(value).attributes == attributes


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("redis://host:6379x", ["port '6379x'", "1 to 65535"]),
        ("redis://host:0", ["port '0'"]),
        ("redis://host:99999", ["port '99999'"]),
        ("redis://:s3cret@host:63a", ["port '63a'"]),
        ("redis://h:1|readonly", ["'|readonly'", "did you mean read-only?"]),
        ("redis://h:1|read_only", ["did you mean read-only?"]),
        ("redis://h:1|read-only=soon", ["read-only=soon", "not a value"]),
        # ccache's attributes, which sccache would ignore without a word
        ("redis://h:1|connect-timeout=5", ["'|connect-timeout'", "would ignore"]),
        ("redis://h:1|share-hits=false", ["'|share-hits'", "would ignore"]),
        ("http://h:8080/c|layout=flat", ["'|layout'", "would ignore"]),
        # an S3 store's attributes on another store
        ("redis://h:1|region=eu-west-1", ["'|region'", "s3:// caches only"]),
        ("webdav+https://h/c|endpoint=https://x", ["'|endpoint'", "s3:// caches only"]),
        ("redis://", ["names no host"]),
        ("redis://:s3cret@", ["names no host"]),
        ("cache:6379", ["is not a URL"]),
        ("ftp://h/x", ["scheme ftp://"]),
        ("redis://h:1 |read-only", ["port '1 '"]),
        ("redis://ho st:1", ["after the host"]),
        ("redis://h\n:1", ["line break"]),
    ],
)
def test_bad_urls_are_one_line_that_hides_the_password(value: str, words: list[str]) -> None:
    with pytest.raises(UserError) as caught:
        settings.resolve({"CCACHE_REMOTE": value})
    message = str(caught.value)
    assert message.startswith("CCACHE_REMOTE '") and "\n" not in message
    assert "s3cret" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "value",
    ["redis://:s3cret/x#y@h:6379", "redis://s3cret@h:1", "http://u:s3cret@h:8080/c"],
)
def test_the_probe_parses_what_the_settings_accept(value: str) -> None:
    """doctor's probe (a closed port here) never raises, and names no password."""
    problem = hostfacts.cache_server_problem(value.replace("@h", "@127.0.0.1"), timeout=1)
    assert "does not answer" in problem and "s3cret" not in problem


def test_index_urls_keep_their_user_and_give_up_their_password() -> None:
    parsed = urls.parse("PIP_INDEX_URL", "https://me:p/w#x@pypi.example/simple")
    assert (parsed.user, parsed.password, parsed.path) == ("me", "p/w#x", "/simple")
    assert parsed.without_password().text() == "https://me@pypi.example/simple"
    anonymous = urls.parse("PIP_INDEX_URL", "https://:tok@pypi.example/simple")
    assert anonymous.without_password().text() == "https://pypi.example/simple"


@pytest.mark.parametrize(
    ("name", "fix"),
    [("TORCH_INDEX_URL", "PIP_INDEX_URL"), ("APT_MIRROR", "needs no password")],
)
def test_urls_whose_password_would_be_a_build_arg_are_refused(name: str, fix: str) -> None:
    with pytest.raises(UserError) as caught:
        settings.resolve({name: "https://me:s3cret@mirror.example/x"})
    message = str(caught.value)
    assert "s3cret" not in message and "me:****@" in message and fix in message


def test_a_password_in_the_index_url_and_a_token_are_one_too_many() -> None:
    with pytest.raises(UserError, match="keep one") as caught:
        settings.resolve(
            {"PIP_INDEX_URL": "https://me:s3cret@pypi.example/simple", "PIP_INDEX_TOKEN": "t"}
        )
    assert "s3cret" not in str(caught.value)


def test_mask_text_hides_passwords_in_command_lines() -> None:
    line = "docker buildx build --build-arg HTTP_PROXY=http://me:s3cret@proxy:3128 ."
    assert urls.mask_text(line) == (
        "docker buildx build --build-arg HTTP_PROXY=http://me:****@proxy:3128 ."
    )
    assert urls.shown("redis://s3cret@h:1") == "redis://****@h:1"

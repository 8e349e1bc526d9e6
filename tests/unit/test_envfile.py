"""Reading and writing .env: file:line errors, atomic writes, backups."""

import pytest

from torchkiln import envfile
from torchkiln.errors import UserError


def test_unparsable_line_is_named_with_file_and_line(tmp_path):
    path = tmp_path / ".env"
    path.write_text("UID=1000\n# fine\nthis is not a setting\nGID=1000\n")
    with pytest.raises(UserError) as caught:
        envfile.read(path)
    message = str(caught.value)
    assert f"{path}:3" in message
    assert "this is not a setting" in message
    assert "NAME=value" in message


def test_unterminated_quote_is_refused(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\nCCA='8.6\n")
    with pytest.raises(UserError, match=r":2: "):
        envfile.read(path)


def test_absent_file_is_empty(tmp_path):
    assert envfile.read(tmp_path / ".env") == {}


def test_interpolation_like_compose(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=x\nB=${A}-y\nC='two words'\n")
    assert envfile.read(path) == {"A": "x", "B": "x-y", "C": "two words"}


def test_write_atomic_replaces_and_sets_mode(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    envfile.write_atomic(path, "new", 0o600)
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_backup_names_never_collide(tmp_path):
    path = tmp_path / ".env"
    first = envfile.backup_name(path, now=0)
    first.write_text("x")
    second = envfile.backup_name(path, now=0)
    assert first != second
    assert second.name.startswith(".env.")


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("CCA_LIST", "did you mean CCA?"),
        ("PYTORCH_VERISON", "did you mean PYTORCH_VERSION?"),
        ("BUILDMODE", "did you mean BUILD_MODE?"),
        ("XYZZY", "see env.example for the names"),
    ],
)
def test_unknown_keys_are_named_with_the_closest_setting(name, hint):
    (note,) = envfile.unknown_names({name: "1", "CCA": "8.6", "HTTP_PROXY": "x"})
    assert note.startswith(f"{name} is not a torchkiln setting") and note.endswith(hint)


@pytest.mark.parametrize(
    ("line", "mode", "secret"),
    [
        ("PIP_INDEX_TOKEN=t0ken", 0o644, True),
        ("CCACHE_REMOTE=redis://:pw@cache.example:6379", 0o644, True),
        ("PIP_INDEX_URL=https://me:pw@index.example/simple", 0o640, True),
        ("PIP_INDEX_URL=https://index.example/simple", 0o644, False),
        ("PIP_INDEX_TOKEN=t0ken", 0o600, False),
    ],
    ids=["token", "ccache-password", "group-readable-url", "no-secret", "already-private"],
)
def test_a_readable_env_holding_a_secret_is_made_private_and_said(tmp_path, line, mode, secret):
    file = tmp_path / ".env"
    file.write_text(f"CCA=8.6\n{line}\n")
    file.chmod(mode)
    assert envfile.exposed_secret(file) is secret
    said = envfile.keep_private(file)
    assert bool(said) is secret
    assert file.stat().st_mode & 0o777 == (0o600 if secret else mode)
    if secret:
        assert said.startswith("note: .env holds a password") and f"{mode:o} -> 600" in said
        assert "t0ken" not in said and "pw" not in said
    assert not envfile.exposed_secret(file)

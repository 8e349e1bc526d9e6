"""Secrets in .env and on their way to the build, and paths on their way to BuildKit: what is
written, with which mode, what Compose and buildx are given, and what is shown."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from torchkiln import (
    build,
    buildplan,
    checkrows,
    compose,
    envfile,
    envtask,
    inputs,
    settingchecks,
    settings,
    wheels,
)
from torchkiln.errors import UserError

DOTENV = {"UID": "1000", "GID": "1000", "CCA": "8.6", "COMPOSE_PROJECT_NAME": "demo"}


@pytest.mark.parametrize(
    "line",
    [
        "CCACHE_REMOTE=redis://:pw@h:6379",  # no user before the ':': still a password
        "CCACHE_REMOTE=redis://pw@h:6379",  # ccache's password-only form
        "CCACHE_REMOTE='redis://:p/w#x@h:6379'",
        "PIP_INDEX_URL=https://me:tok@h/simple",
        "CCACHE_REMOTE=http://h/c|bearer-token=abc",
        "MY_SECRET=x",
    ],
)
def test_every_form_of_a_password_makes_env_private(tmp_path: Path, line: str) -> None:
    assert envfile.holds_secret(f"# a comment with https://a:b@c\n{line}\n")
    path = tmp_path / ".env"
    envfile.write(path, f"{line}\n", force=False)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_url_in_a_comment_is_no_secret() -> None:
    assert not envfile.holds_secret("# PIP_INDEX_URL=https://USER:PASSWORD@HOST/simple\nA=1\n")


def test_force_never_loosens_a_private_env_and_its_backup_stays_private(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("CCACHE_REMOTE=redis://:pw@h:6379\n")
    path.chmod(0o600)
    os.umask(0o022)
    backup = envfile.write(path, "USR=alice\n", force=True)  # no secret in the new text
    assert path.stat().st_mode & 0o777 == 0o600
    assert backup is not None and backup.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ("CCACHE_REMOTE=redis://:pa$word@h:6379", True),
        ('CCACHE_REMOTE="redis://:pa$word@h:6379"', True),
        ("CCACHE_REMOTE=redis://:pa$$word@h:6379", True),
        ("CCACHE_REMOTE='redis://:pa$word@h:6379'", False),  # single quotes: literal for both
        ("BUILD_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel", False),  # both expand ${NAME}
        ("CCACHE_REMOTE=redis://:pa%24word@h:6379", False),
    ],
)
def test_a_dollar_compose_would_read_otherwise_is_refused(tmp_path, line, refused) -> None:
    path = tmp_path / ".env"
    path.write_text(f"UID=1000\n{line}\n")
    if not refused:
        envfile.read(path)
        return
    with pytest.raises(UserError) as caught:
        envfile.read(path)
    message = str(caught.value)
    assert f"{path}:2:" in message and "single quotes" in message
    assert "pa$word" not in message and "pa$$word" not in message


def test_an_unreadable_line_with_a_password_is_shown_masked(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("CCACHE_REMOTE='redis://:s3cret@h:6379\n")
    with pytest.raises(UserError) as caught:
        envfile.read(path)
    assert "s3cret" not in str(caught.value) and ":2:" not in str(caught.value)


def test_values_render_so_compose_and_dotenv_read_them_alike(tmp_path: Path) -> None:
    values = settings.normalize({"CCACHE_REMOTE": "redis://:p$w #x 'q@h:6379|read-only"})
    written = envfile.quote(values["CCACHE_REMOTE"])
    assert not set("$#' ") & set(written.strip("'"))
    text = f"CCACHE_REMOTE={written}\n"
    path = tmp_path / ".env"
    path.write_text(text)
    read = envfile.read(path)["CCACHE_REMOTE"]
    assert settings.resolve({"CCACHE_REMOTE": read})["CCACHE_REMOTE"] == values["CCACHE_REMOTE"]
    assert envfile.quote("a$b") == "'a$b'"


def test_kept_notes_mask_passwords() -> None:
    kept, notes = envtask.carried_over(
        {"CCACHE_REMOTE": "redis://:s3cret@h:6379", "PIP_INDEX_TOKEN": "t0k"}
    )
    assert kept["CCACHE_REMOTE"] == "redis://:s3cret@h:6379"
    assert "kept your CCACHE_REMOTE=redis://****@h:6379" in notes
    assert "kept your PIP_INDEX_TOKEN=****" in notes
    assert not any("s3cret" in note or "t0k" in note for note in notes)


def plan(tmp_path: Path, **dotenv: str) -> buildplan.BuildPlan:
    return build.plan(
        tmp_path,
        inputs.BuildOptions(),
        environ={},
        dotenv={**DOTENV, **dotenv},
        cwd=tmp_path,
    )


def test_a_password_in_the_index_url_travels_only_as_the_token_secret(tmp_path: Path) -> None:
    built = plan(tmp_path, PIP_INDEX_URL="https://me:p/w#x@pypi.example/simple")
    override = built.override_text()
    assert "p/w" not in override and "p%2Fw" not in override
    args = json.loads(override)["services"]["train"]["build"]["args"]
    assert args["PIP_INDEX_URL"] == "https://me@pypi.example/simple"
    # net.sh puts the token back as the password of the URL's user, for pip alone.
    assert compose.build_secrets(built.values) == {
        "PIP_INDEX_TOKEN": "p/w#x",
        "COMPILE_CACHE": "",
        "BUILD_FARM": "",
        "BUILD_FARM_TOKEN": "",
    }


def test_the_override_labels_the_checkout_and_escapes_every_dollar(tmp_path: Path) -> None:
    text = compose.override_text(
        "train",
        {"PIP_INDEX_URL": "https://h/$x"},
        {"pytorch-src": "/src/$HOME/a,b"},
        ca_bundle="/certs/$ca.pem",
        checkout="proj-0123abcd",
    )
    document = json.loads(text)
    build_section = document["services"]["train"]["build"]
    assert build_section["labels"] == {compose.CHECKOUT_LABEL: "proj-0123abcd"}
    assert build_section["args"]["PIP_INDEX_URL"] == "https://h/$$x"
    assert build_section["additional_contexts"]["pytorch-src"] == "/src/$$HOME/a,b"
    assert document["secrets"]["ca_bundle"]["file"] == "/certs/$$ca.pem"


@pytest.mark.parametrize("name", ["a,b", 'a"b', "a b", "a=b", "a'b", " lead", "ü,ß"])
def test_buildx_csv_options_keep_any_path_one_field(name: str) -> None:
    dest, bundle = f"/out/{name}", f"/certs/{name}.pem"
    command = compose.wheels_command("train", {}, {}, bundle, dest)
    output = command[command.index("--output") + 1]
    fields = next(csv.reader(io.StringIO(output)))
    assert fields == ["type=local", f"dest={dest}"]
    secret = next(item for item in command if item.startswith("id=ca_bundle"))
    assert next(csv.reader(io.StringIO(secret))) == ["id=ca_bundle", f"src={bundle}"]


@pytest.mark.parametrize("flag", ["--dest", "--source", "--wheelhouse", "--extension"])
def test_a_path_with_a_line_break_is_refused_by_name(tmp_path: Path, flag: str) -> None:
    bad = str(tmp_path / "a\nb")
    with pytest.raises(UserError) as caught:
        if flag == "--dest":
            wheels.check_dest(Path(bad), False, [])
        elif flag == "--source":
            inputs.parse_sources([f"pytorch={bad}"], tmp_path)
        elif flag == "--wheelhouse":
            inputs.check_wheelhouse(bad, tmp_path)
        else:
            inputs.split_extensions([bad], tmp_path)
    message = str(caught.value)
    assert message.startswith(flag) and "\n" not in message and "line break" in message


def test_staging_is_on_the_destinations_own_filesystem(tmp_path: Path) -> None:
    existing = tmp_path / "mounted"
    existing.mkdir()
    staging = wheels.make_staging(existing)
    assert staging.parent == existing  # a mount point's own filesystem: no cross-device rename
    (staging / "x-1.0-py3-none-any.whl").write_bytes(b"wheel")
    assert wheels.check_dest(existing, False, []) == []  # our staging folder is not the user's
    wheels.place(staging, existing, [])
    assert sorted(p.name for p in existing.iterdir()) == [
        staging.name,
        "x-1.0-py3-none-any.whl",
    ]
    new = tmp_path / "new,dest"
    assert wheels.make_staging(new).parent == tmp_path


def test_a_dest_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    parent = tmp_path / "file"
    parent.write_text("")
    with pytest.raises(UserError, match=r"^--dest .*cannot write into"):
        wheels.make_staging(parent / "dist")


def test_doctor_warns_of_a_password_in_env_index_url_and_masks_every_row() -> None:

    assert (
        settingchecks.check_index_password({"PIP_INDEX_URL": "https://pypi.example/simple"}) is None
    )
    row = settingchecks.check_index_password(
        {"PIP_INDEX_URL": "https://me:s3cret@pypi.example/simple"}
    )
    assert row is not None and row.status == "warn"
    assert "PIP_INDEX_URL=https://me@pypi.example/simple" in row.fix and "s3cret" not in row.fix
    # A row another check wrote with a URL in it: the table masks it all the same.
    other = checkrows.Row("tls", "warn", "https://me:s3cret@h/simple does not answer", "see x:y@z")
    shown = checkrows.render([row, other])
    assert "s3cret" not in shown and "https://me:****@h/simple" in shown

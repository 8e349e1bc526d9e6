"""The settings model: precedence, validation, and env.example generated from it."""

import re
from pathlib import Path

import pytest

from torchkiln import envfile, settings
from torchkiln.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_every_setting_declared_once_with_meaning():
    names = [setting.name for setting in settings.SETTINGS]
    assert len(names) == len(set(names))
    for setting in settings.SETTINGS:
        assert setting.meaning, setting.name
        assert setting.group in settings.GROUP_TITLES, setting.name
        assert set(setting.services) <= set(settings.SERVICES), setting.name


def test_defaults_pass_their_own_checks():
    settings.validate({setting.name: setting.default for setting in settings.SETTINGS})


def test_precedence_flag_over_environment_over_dotenv_over_default():
    resolved = settings.resolve(
        flags={"CCA": "9.0"},
        environ={"CCA": "8.0", "TZ": "Europe/Berlin", "UNRELATED": "x"},
        dotenv={"CCA": "7.5", "TZ": "Asia/Tokyo", "MAX_JOBS": "4"},
    )
    assert resolved["CCA"] == "9.0"
    assert resolved["TZ"] == "Europe/Berlin"
    assert resolved["MAX_JOBS"] == "4"
    assert resolved["PYTORCH_VERSION"] == settings.BY_NAME["PYTORCH_VERSION"].default
    assert "UNRELATED" not in resolved


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UID", "abc"),
        ("USR", "John"),
        ("USR", "john doe"),
        ("COMPOSE_PROJECT_NAME", "MyProject"),
        ("BUILD_MODE", "fast"),
        ("MAX_JOBS", "0"),
        ("PYTORCH_VERSION", "2.14"),
        ("CCA", "sm_86"),
    ],
)
def test_bad_values_refused_with_name_and_value(name, value):
    with pytest.raises(UserError) as caught:
        settings.resolve(flags={name: value})
    assert name in str(caught.value)
    assert value in str(caught.value)


def test_expand_follows_references_like_docker_arg():
    values = settings.resolve()
    effective = settings.effective(values)
    assert effective["BUILD_IMAGE"] == "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04"


def test_env_example_is_generated_from_the_model():
    assert (REPO / "env.example").read_text() == envfile.render_example(), (
        "env.example drifted from settings.py; regenerate it with "
        "python -c 'from torchkiln import envfile; print(envfile.render_example(), end=\"\")'"
    )


def test_env_example_reads_back_to_the_defaults(tmp_path):
    values = {setting.name: setting.default for setting in settings.SETTINGS}
    text = envfile.render(values, values, "# all set")
    path = tmp_path / ".env"
    path.write_text(text)
    assert envfile.read(path) == settings.effective(values)  # ${NAME} expands as in Compose


def test_quote_only_when_needed():
    assert envfile.quote("8.6;9.0") == "8.6;9.0"
    assert envfile.quote("") == "''"
    assert envfile.quote("a b") == "'a b'"
    with pytest.raises(UserError):
        envfile.quote("it's")


def test_build_args_per_service():
    assert "CUDA_VERSION" in settings.build_args("full")
    assert "CUDA_VERSION" not in settings.build_args("train")
    assert "CCA" in settings.build_args("train")
    assert "NGC_YEAR" in settings.build_args("ngc")
    assert "TZ" not in settings.build_args("train")  # run-time only


@pytest.mark.parametrize(
    ("values", "shown"),
    [({"USR": "root"}, "USR 'root'"), ({"GRP": "root"}, "GRP 'root'"), ({"GID": "0"}, "GID '0'")],
)
def test_non_root_user_cannot_take_roots_names(values, shown):
    with pytest.raises(UserError, match=shown):
        settings.resolve(flags={"UID": "1234", **values})
    settings.resolve(flags={"UID": "0", **values})  # root itself is fine


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"UID": "4294967295"}, "UID '4294967295' is not a user or group id"),
        ({"GID": "99999999999"}, "GID '99999999999' is not a user or group id"),
        ({"UID": "-5"}, "UID '-5' is not a user or group id"),
        ({"UID": "1.5"}, "UID '1.5'"),
        ({"UID": "33"}, "UID '33' is a system account's id"),
        ({"UID": "65534"}, "UID '65534' is a system account's id"),
        ({"USR": "www-data"}, "USR 'www-data' is a system account"),
        ({"USR": "daemon"}, "USR 'daemon' is a system account"),
        ({"GRP": "root"}, "GRP 'root' needs UID 0"),
    ],
    ids=["uid-max", "gid-huge", "negative", "fraction", "www-data-id", "nobody", "www-data",
         "daemon", "root-group"],
)  # fmt: skip
def test_container_user_collisions_are_refused_before_building(values, words):
    with pytest.raises(UserError, match=re.escape(words)):
        settings.resolve(values)


def test_ids_are_normalised_and_the_largest_id_is_accepted():
    values = settings.resolve({"UID": " 01000 ", "GID": str(settings.ID_MAX)})
    assert (values["UID"], values["GID"]) == ("1000", str(settings.ID_MAX))
    assert settings.resolve({"UID": "0", "USR": "root", "GRP": "root", "GID": "0"})["UID"] == "0"

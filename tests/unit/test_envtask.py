"""What invoke env decides to write, from host facts and chosen values."""

from pathlib import Path

import pytest

from torchkiln import compose, envfile, envtask
from torchkiln.errors import UserError
from torchkiln.hostfacts import HostUser

ALICE = HostUser(1234, 1234, "alice", "alice")


CHECKOUT = "torchkiln-0123abcd"


def plan(host=ALICE, cca="8.6", nvidia=True, checkout=CHECKOUT, kept=None, cpu=False, **chosen):
    return envtask.plan_env(
        host, "Europe/Berlin", cca, nvidia, "no runtime", checkout, chosen, kept, cpu
    )


def test_host_facts_become_settings():
    result = plan()
    assert result.values["UID"] == "1234"
    assert result.values["USR"] == "alice"
    assert result.values["CCA"] == "8.6"
    assert result.values["TZ"] == "Europe/Berlin"
    assert result.values["COMPOSE_FILE"] == "compose/compose.yaml"
    assert result.values["COMPOSE_PROJECT_NAME"] == CHECKOUT
    assert result.values["TRAIN_IMAGE_NAME"] == f"{CHECKOUT}/train:latest"
    assert result.notes == []


def test_no_nvidia_runtime_adds_cpu_override_and_says_so():
    result = plan(nvidia=False)
    assert result.values["COMPOSE_FILE"] == "compose/compose.yaml:compose/cpu.yaml"
    assert any("compose/cpu.yaml" in note for note in result.notes)


def test_uid_zero_means_root_and_no_user():
    result = plan(UID="0")
    assert (result.values["USR"], result.values["GRP"], result.values["GID"]) == (
        "root",
        "root",
        "0",
    )
    assert any("root" in note for note in result.notes)


def test_host_name_with_capitals_and_spaces_is_made_valid_and_said():
    identity = compose.checkout_identity(Path("/home/John Doe/My Repo"))
    result = plan(host=HostUser(1000, 1000, "John Doe", "Domain Users"), checkout=identity)
    assert result.values["USR"] == "john_doe"
    assert result.values["GRP"] == "domain_users"
    assert result.values["COMPOSE_PROJECT_NAME"].startswith("my-repo-")
    assert any("John Doe" in note for note in result.notes)


def test_explicit_bad_user_name_is_refused():
    with pytest.raises(UserError, match="USR 'John'"):
        plan(USR="John")


def test_no_gpu_and_no_flag_leaves_cca_empty_with_a_note():
    result = plan(cca="")
    assert result.values["CCA"] == ""
    assert any("--cca" in note for note in result.notes)


def test_explicit_cca_unbuildable_with_cuda_is_refused():
    with pytest.raises(UserError, match=r"3\.5"):
        plan(CCA="3.5")


def test_detected_old_gpu_is_written_with_a_note():
    result = plan(cca="6.1")
    assert result.values["CCA"] == "6.1"
    assert any("6.1" in note for note in result.notes)


def test_render_reads_back(tmp_path):
    result = plan(cca="8.6;9.0")
    path = tmp_path / ".env"
    path.write_text(envtask.render(result))
    read = envfile.read(path)
    for name, value in result.values.items():
        assert read[name] == value
    assert "PYTORCH_VERSION" not in read  # defaults stay commented out


def test_write_refuses_existing_without_force_and_backs_up_with_force(tmp_path):
    path = tmp_path / ".env"
    path.write_text("USR=old\n")
    with pytest.raises(FileExistsError):
        envfile.write(path, "USR=new\n", force=False)
    assert path.read_text() == "USR=old\n"
    backup = envfile.write(path, "USR=new\n", force=True)
    assert backup is not None and backup.read_text() == "USR=old\n"
    assert path.read_text() == "USR=new\n"


def test_secret_like_values_make_env_private(tmp_path):
    path = tmp_path / ".env"
    envfile.write(path, "PIP_INDEX_URL=https://me:token@index.example/simple\n", force=False)
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("text", "private"),
    [
        ("PIP_INDEX_TOKEN=s3cr3t\n", True),
        ("MY_PASSWORD='hunter2'\n", True),
        ("export CLIENT_SECRET=abc\n", True),
        ("PIP_INDEX_URL=https://me:token@index.example/simple\n", True),
        ("PIP_INDEX_TOKEN=\nPIP_INDEX_TOKEN=''\n", False),
        ("# PIP_INDEX_TOKEN=s3cr3t\n", False),
        ("USR=alice\nCCA=8.6\n", False),
    ],
    ids=["token", "password", "secret", "url", "empty", "comment", "plain"],
)
def test_secret_like_settings_make_env_private(tmp_path, text, private):
    assert envfile.holds_secret(text) is private
    path = tmp_path / ".env"
    envfile.write(path, text, force=False)
    assert path.stat().st_mode & 0o777 == (0o600 if private else 0o644)


def test_invoke_env_never_writes_the_index_token():
    """The token is a build secret read from the environment; .env gets no copy of it."""
    text = envtask.render(plan(PIP_INDEX_TOKEN="s3cr3t-from-environment"))
    assert "s3cr3t-from-environment" not in text
    assert not envfile.holds_secret(text)


def test_root_asking_for_another_uid_gets_no_root_names():
    root = HostUser(0, 0, "root", "root")
    result = plan(host=root, UID="1234")
    values = result.values
    assert (values["UID"], values["GID"], values["USR"], values["GRP"]) == (
        "1234",
        "1234",
        "user",
        "user",
    )
    named = plan(host=root, UID="1234", USR="alice").values
    assert (named["USR"], named["GRP"]) == ("alice", "alice")


@pytest.mark.parametrize("flag", ["GID", "USR", "GRP"])
def test_a_flag_root_cannot_honour_is_refused_not_dropped(flag):
    value = {"GID": "1234", "USR": "alice", "GRP": "alice"}[flag]
    with pytest.raises(UserError, match=f"--{flag.lower()} {value} cannot apply with UID 0"):
        plan(UID="0", **{flag: value})
    assert plan(UID="0", USR="root").values["USR"] == "root"


def test_force_keeps_the_users_own_settings_and_names_each():
    old = {
        "BUILD_MODE": "wheels",
        "PYTHON_VERSION": "3.11",
        "BUILD_IMAGE": "debian:12",
        "TRAIN_IMAGE": "debian:12",
        "UID": "999",  # a host fact: detected anew, not kept
        "CCA_LIST": "8.6",  # no setting
    }
    kept, notes = envtask.carried_over(old)
    assert kept == {
        k: old[k] for k in ("BUILD_MODE", "PYTHON_VERSION", "BUILD_IMAGE", "TRAIN_IMAGE")
    }
    assert "kept your BUILD_MODE=wheels" in notes
    assert "dropped CCA_LIST, which is no torchkiln setting" in notes
    written = plan(kept=kept).values
    assert written["BUILD_IMAGE"] == "debian:12" and written["UID"] == "1234"


def test_cpu_writes_the_cpu_route():
    values = plan(cca="", cpu=True, nvidia=False).values
    assert (values["BUILD_MODE"], values["CUDA_FROM"], values["BUILD_IMAGE"]) == (
        "wheels",
        "none",
        "ubuntu:24.04",
    )

"""Doctor's judgements, from facts given as values."""

import pytest

from torchkiln import doctor
from torchkiln.engine import EngineFacts

GOOD = dict(
    server_version="26.1.5",
    runtimes=["nvidia", "runc"],
    root_dir="/var/lib/docker",
    free_bytes=200 * doctor.GB,
    compose_version="2.26.1",
    buildx_version="0.13.1",
)


def state(**values):
    return doctor.env_state({"CCA": "8.6", **values}, {})


def rows_by_check(facts, driver="580.65.06", env=None):
    rows = doctor.diagnose(facts, driver, env or state())
    return {row.check: row for row in rows}


def test_all_good_passes():
    rows = doctor.diagnose(EngineFacts(**GOOD), "580.95.05", state())
    assert not doctor.failed(rows), doctor.render(rows)


@pytest.mark.parametrize(
    ("change", "check", "status"),
    [
        ({"server_version": "20.10.24"}, "engine", "error"),
        ({"compose_version": ""}, "compose", "error"),
        ({"compose_version": "", "compose_v1": "1.29.2"}, "compose", "error"),
        ({"buildx_version": ""}, "buildx", "error"),
        ({"runtimes": ["runc"]}, "nvidia runtime", "error"),
        ({"runtimes": ["runc"], "cdi_devices": ["nvidia.com/gpu=all"]}, "nvidia runtime", "ok"),
        ({"free_bytes": 25 * doctor.GB}, "disk", "error"),
        ({"free_bytes": 45 * doctor.GB}, "disk", "warn"),
        ({"compose_version": "2.21.0"}, "compose", "error"),
        ({"free_bytes": None}, "disk", "warn"),
    ],
    ids=[
        "old-engine",
        "no-compose",
        "compose-v1",
        "no-buildx",
        "no-runtime",
        "cdi",
        "low-disk",
        "tight-disk",
        "old-compose",
        "remote-disk",
    ],
)
def test_engine_problems(change, check, status):
    row = rows_by_check(EngineFacts(**{**GOOD, **change}))[check]
    assert row.status == status
    if status != "ok":
        assert row.fix


def test_compose_v1_is_named():
    facts = EngineFacts(**{**GOOD, "compose_version": "", "compose_v1": "1.29.2"})
    assert "v1" in rows_by_check(facts)["compose"].detail


def test_engine_down_is_one_row_and_no_crash():
    rows = doctor.diagnose(EngineFacts(error="connection refused"), "", state())
    engine_rows = [row for row in rows if row.check == "engine"]
    assert len(engine_rows) == 1 and engine_rows[0].status == "error"
    assert doctor.failed(rows)


def test_cpu_override_turns_missing_runtime_into_a_warning():
    env = state(COMPOSE_FILE="compose/compose.yaml:compose/cpu.yaml")
    facts = EngineFacts(**{**GOOD, "runtimes": ["runc"]})
    assert rows_by_check(facts, env=env)["nvidia runtime"].status == "warn"


def test_old_driver_for_cuda_13():
    row = rows_by_check(EngineFacts(**GOOD), driver="550.54.15")["driver"]
    assert row.status == "error"
    assert "580.65.06" in row.detail


def test_cca_unbuildable_and_empty():
    assert rows_by_check(EngineFacts(**GOOD), env=state(CCA="3.5"))["cca"].status == "error"
    assert rows_by_check(EngineFacts(**GOOD), env=state(CCA=""))["cca"].status == "error"
    wheels = state(CCA="", BUILD_MODE="wheels")
    assert rows_by_check(EngineFacts(**GOOD), env=wheels)["cca"].status == "ok"


def test_missing_and_invalid_env():
    missing = doctor.env_state(None, {})
    assert rows_by_check(EngineFacts(**GOOD), env=missing)[".env"].status == "error"
    invalid = doctor.env_state({"UID": "abc"}, {})
    row = rows_by_check(EngineFacts(**GOOD), env=invalid)[".env"]
    assert row.status == "error" and "UID 'abc'" in row.detail


def test_render_shows_fix_only_for_failures():
    text = doctor.render([doctor.Row("a", "ok", "fine", "x"), doctor.Row("b", "error", "bad", "y")])
    assert "fix: y" in text and "fix: x" not in text


def values(**changes):
    return {**doctor.env_state({"CCA": "8.6"}, {}).values, **changes}


def test_build_blockers_pass_on_a_good_host():
    assert doctor.build_blockers(EngineFacts(**GOOD), "580.95.05", values(), up=True) == []


def test_build_blocked_without_runtime_unless_cpu_override_or_no_up():
    facts = EngineFacts(**{**GOOD, "runtimes": ["runc"]})
    blocked = doctor.build_blockers(facts, "", values(), up=True)
    assert [row.check for row in blocked] == ["nvidia runtime"]
    cpu = values(COMPOSE_FILE="compose/compose.yaml:compose/cpu.yaml")
    assert doctor.build_blockers(facts, "", cpu, up=True) == []
    assert doctor.build_blockers(facts, "", values(), up=False) == []


def test_build_blocked_by_engine_disk_and_old_driver():
    down = doctor.build_blockers(EngineFacts(error="refused"), "", values(), up=False)
    assert down[0].check == "engine"
    low = EngineFacts(**{**GOOD, "free_bytes": 1 * doctor.GB})
    assert doctor.build_blockers(low, "", values(), up=False)[0].check == "disk"
    old = doctor.build_blockers(EngineFacts(**GOOD), "535.54.03", values(), up=True)
    assert [row.check for row in old] == ["driver"]


def test_wheels_mode_needs_less_disk():
    facts = EngineFacts(**{**GOOD, "free_bytes": 25 * doctor.GB})
    assert doctor.check_disk(facts, "source").status == "error"
    assert doctor.check_disk(facts, "wheels").status == "ok"
    assert doctor.check_disk(facts, "source").detail.endswith("a source build needs about 40 GB")


def test_full_cuda_is_checked_beside_train_default():
    env = state(CCA="10.0", CUDA_VERSION="12.4.1")
    rows = rows_by_check(EngineFacts(**GOOD), env=env)
    assert rows["cca"].status == "ok"  # train builds 10.0 with the default CUDA 13
    assert rows["cca (full)"].status == "error"  # full would need CUDA >= 12.8
    assert "driver (full)" in rows

"""Doctor's judgements, from facts given as values."""

import pytest

from torchkiln import baseimages, checkrows, doctor, settingchecks, settings, tlscheck
from torchkiln.engine import EngineFacts
from torchkiln.hostfacts import CABundle, ImageFacts, TLSVerdict

GOOD = dict(
    server_version="26.1.5",
    runtimes=["nvidia", "runc"],
    root_dir="/var/lib/docker",
    free_bytes=200 * doctor.GB,
    compose_version="2.26.1",
    buildx_version="0.13.1",
)


def state(**values):
    return settingchecks.env_state({"CCA": "8.6", **values}, {})


def rows_by_check(facts, driver="580.65.06", env=None):
    rows = doctor.diagnose(facts, driver, env or state())
    return {row.check: row for row in rows}


def test_all_good_passes():
    rows = doctor.diagnose(EngineFacts(**GOOD), "580.95.05", state())
    assert not checkrows.failed(rows), checkrows.render(rows)


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
    assert checkrows.failed(rows)


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
    missing = settingchecks.env_state(None, {})
    assert rows_by_check(EngineFacts(**GOOD), env=missing)[".env"].status == "error"
    invalid = settingchecks.env_state({"UID": "abc"}, {})
    row = rows_by_check(EngineFacts(**GOOD), env=invalid)[".env"]
    assert row.status == "error" and "UID 'abc'" in row.detail


def test_render_shows_fix_only_for_failures():
    text = checkrows.render(
        [checkrows.Row("a", "ok", "fine", "x"), checkrows.Row("b", "error", "bad", "y")]
    )
    assert "fix: y" in text and "fix: x" not in text


def values(**changes):
    return {**settingchecks.env_state({"CCA": "8.6"}, {}).values, **changes}


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


# --- a refusal, and nothing spurious after it ---------------------------------------------------


def test_a_refused_env_gives_one_error_not_spurious_ones():
    # What the old base-image advice made people type; COMPOSE_FILE and the disk floor are fine.
    env = settingchecks.env_state(
        {
            "BUILD_IMAGE": "TRAIN_IMAGE=debian:12",
            "COMPOSE_FILE": "compose/compose.yaml:compose/cpu.yaml",
            "MIN_FREE_DISK_GB": "5",
        },
        {},
    )
    facts = EngineFacts(**{**GOOD, "runtimes": ["runc"], "free_bytes": 20 * doctor.GB})
    rows = doctor.diagnose(facts, "", env)
    errors = [row.check for row in rows if row.status == "error"]
    assert errors == [".env"], checkrows.render(rows)
    assert "BUILD_IMAGE 'TRAIN_IMAGE=debian:12'" in rows_by_check(facts, env=env)[".env"].detail


def test_the_cpu_override_warning_does_not_offer_to_add_what_is_there():
    env = state(COMPOSE_FILE="compose/compose.yaml:compose/cpu.yaml")
    row = rows_by_check(EngineFacts(**{**GOOD, "runtimes": ["runc"]}), env=env)["nvidia runtime"]
    assert "adds compose/cpu.yaml" not in row.fix
    assert "takes compose/cpu.yaml out" in row.fix
    missing = rows_by_check(EngineFacts(**{**GOOD, "runtimes": ["runc"]}))["nvidia runtime"]
    assert "adds compose/cpu.yaml" in missing.fix


# --- base images: advice that can be typed as printed -------------------------------------------

DEBIAN = ImageFacts("local/debian:bookworm", "debian", "12")


def run_fix_into_env(fix: str, tmp_path, before: str = "") -> dict:
    """Run each `printf … >> .env` command of a fix as printed, and resolve the result."""
    import re
    import subprocess

    from torchkiln import envfile, settings

    env_file = tmp_path / ".env"
    env_file.write_text(before)
    commands = re.findall(r"printf '[^']*' >> \.env", fix)
    assert commands, fix
    subprocess.run(["bash", "-c", commands[0]], cwd=tmp_path, check=True)
    return settings.resolve({}, {}, envfile.read(env_file))


def test_a_missing_base_image_names_an_image_here_with_its_python_and_mode(tmp_path):
    values = settings.resolve()
    problems = {values["BUILD_IMAGE"]: "no such host"}
    row = baseimages.check_base_images("train", values, problems, [DEBIAN], gpu_here=True)
    assert row.status == "error" and "BUILD_IMAGE=TRAIN_IMAGE" not in row.fix
    assert "local/debian:bookworm (Debian 12, Python 3.11)" in row.fix
    assert "for the CPU only" not in row.fix  # this machine has a GPU runtime
    # The lines work verbatim, also appended to a .env that set other values before (no CCA
    # here and no GPU to find one: official CUDA wheels, which need none).
    resolved = run_fix_into_env(row.fix, tmp_path, "UID=1000\nBUILD_IMAGE=debian:12")
    assert resolved["BUILD_IMAGE"] == resolved["TRAIN_IMAGE"] == "local/debian:bookworm"
    assert resolved["PYTHON_VERSION"] == "3.11"
    assert resolved["CUDA_FROM"] == "pypi" and resolved["BUILD_MODE"] == "wheels"


def test_with_a_cca_the_mode_stays_and_with_no_gpu_the_cpu_route_is_named(tmp_path):
    values = settingchecks.env_state({"CCA": "8.6"}, {}).values
    problems = {values["BUILD_IMAGE"]: "no such host"}
    row = baseimages.check_base_images("train", values, problems, [DEBIAN], gpu_here=False)
    assert run_fix_into_env(row.fix, tmp_path)["BUILD_MODE"] == "source"
    cpu_fix = row.fix.split("for the CPU only", 1)[1]
    resolved = run_fix_into_env(cpu_fix, tmp_path)
    assert resolved["CUDA_FROM"] == "none" and resolved["BUILD_MODE"] == "wheels"
    assert resolved["PYTHON_VERSION"] == "3.11"


def test_no_local_image_names_no_lines_it_cannot_vouch_for():
    values = settings.resolve()
    row = baseimages.check_base_images("train", values, {values["BUILD_IMAGE"]: "refused"}, [])
    assert "printf" not in row.fix and "docker load" in row.fix


@pytest.mark.parametrize(
    ("image", "distro"),
    [
        ("nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04", ("ubuntu", "24.04")),
        ("ubuntu:22.04", ("ubuntu", "22.04")),
        ("local/debian:bookworm", ("debian", "12")),
        ("debian:12-slim", ("debian", "12")),
        ("registry.example.com/team/base:1", ("", "")),
    ],
)
def test_the_distro_from_an_image_name(image, distro):
    assert baseimages.distro_from_name(image) == distro


def test_python_version_against_the_images_own():
    values = settings.resolve()  # PYTHON_VERSION 3.12
    rows = baseimages.check_python(values, [DEBIAN])
    assert rows[0].status == "warn" and "has Python 3.11, not PYTHON_VERSION 3.12" in rows[0].detail
    assert "printf '\\nPYTHON_VERSION=3.11\\n' >> .env" in rows[0].fix
    assert baseimages.check_python(values, [DEBIAN], index_unreachable=True)[0].status == "error"
    debian = settingchecks.env_state({"PYTHON_VERSION": "3.11"}, {}).values
    assert baseimages.check_python(debian, [DEBIAN])[0].status == "ok"
    # An image with a python3 of its own: that one is used, whatever the distro ships.
    own = ImageFacts("python:3.12-bookworm", "debian", "12", python="3.12")
    assert baseimages.check_python(values, [own])[0].status == "ok"
    # Not here and the name says nothing: not known, said as such.
    unknown = ImageFacts("registry.example.com/team/base:1", error="not here")
    assert baseimages.check_python(values, [unknown])[0].status == "warn"


# --- TLS: a TLS-inspecting network is noticed, and its bundle used or named ---------------------

INDEX = "https://index.example/simple"
FRESH, SYSTEM, PROXY_CA = "/fresh.pem", "/etc/system.pem", "/home/u/proxy-ca.pem"


def verifier(trusting: set[str], unreachable: bool = False):
    """A handshake: ok with the bundles that hold the index's CA."""

    def verify(url: str, bundle: str) -> TLSVerdict:
        if unreachable:
            return TLSVerdict("unreachable", "timed out")
        if bundle in trusting:
            return TLSVerdict("ok")
        return TLSVerdict("untrusted", "self-signed certificate in certificate chain")

    return verify


def decide(trusting, configured=None, candidates=(), unreachable=False):
    return tlscheck.decide_ca(
        [INDEX], configured, list(candidates), SYSTEM, FRESH, verifier(trusting, unreachable)
    )


def test_an_index_a_fresh_image_trusts_needs_no_bundle():
    decision = decide({FRESH, SYSTEM})
    assert decision.bundle == "" and not decision.problem and not decision.note
    assert decision.row().status == "ok"


def test_pip_cert_that_verifies_an_inspected_index_is_used_by_itself():
    decision = decide({PROXY_CA}, candidates=[CABundle("PIP_CERT", PROXY_CA)])
    assert decision.bundle == PROXY_CA and not decision.problem
    assert decision.note.startswith(f"note: {INDEX} presents a certificate a fresh image does")
    assert f"PIP_CERT {PROXY_CA} verifies it" in decision.note
    assert f"(as --ca-bundle {PROXY_CA})" in decision.note and "\n" not in decision.note


def test_the_system_bundle_is_used_where_it_holds_the_proxy_ca():
    # The host's IT installed the proxy's CA system-wide; a fresh image lacks it.
    decision = decide({SYSTEM})
    assert decision.bundle == SYSTEM and "the system's CA bundle" in decision.note


def test_an_inspected_index_no_bundle_here_verifies_is_refused_with_the_flag_to_add():
    decision = decide(set(), candidates=[CABundle("REQUESTS_CA_BUNDLE", "/other.pem")])
    assert decision.problem.startswith(f"{INDEX} presents a certificate that neither a fresh")
    assert "invoke build --ca-bundle /path/to/that-ca.pem" in decision.fix
    assert decision.row().status == "error"


def test_a_given_bundle_that_does_not_verify_is_refused_naming_the_one_that_does():
    given = CABundle("CA_BUNDLE", "/wrong.pem")
    decision = decide({PROXY_CA}, configured=given, candidates=[CABundle("PIP_CERT", PROXY_CA)])
    assert decision.problem.startswith(f"CA_BUNDLE /wrong.pem does not verify {INDEX}")
    assert decision.fix.startswith(f"invoke build --ca-bundle {PROXY_CA} (PIP_CERT")
    assert decide({"/wrong.pem"}, configured=given).bundle == "/wrong.pem"


def test_an_unreachable_index_falls_back_on_the_host_setting_or_says_not_checked():
    custom = decide(set(), candidates=[CABundle("PIP_CERT", PROXY_CA)], unreachable=True)
    assert custom.bundle == PROXY_CA and "PIP_CERT names" in custom.note
    system_only = decide(set(), candidates=[CABundle("PIP_CERT", SYSTEM)], unreachable=True)
    assert system_only.bundle == "" and system_only.unreachable
    assert system_only.row().status == "warn"


def test_the_indexes_probed_are_the_https_ones_the_build_uses():
    assert tlscheck.index_urls({"PIP_INDEX_URL": "", "TORCH_INDEX_URL": ""}, INDEX) == [INDEX]
    assert tlscheck.index_urls(
        {"PIP_INDEX_URL": "http://mirror/simple", "TORCH_INDEX_URL": "https://t/whl/cpu"}, INDEX
    ) == ["https://t/whl/cpu"]

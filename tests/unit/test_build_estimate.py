"""The estimate (published figures, then this machine's record), the summary's next steps, the
failure line and what a dry run leaves: pure functions, no Docker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from invoke import Config, MockContext, Result

from torchkiln import build, buildsummary, doctor, estimate, extcompile, inputs, settings, timings
from torchkiln.runner import Streamed

GB = 1024**3
DOTENV = {"UID": "1000", "GID": "1000", "CCA": "8.6", "COMPOSE_PROJECT_NAME": "demo"}


def hours_range(text: str) -> tuple[float, float]:
    """The 'A to B' of an estimate, in hours."""

    def hours(part: str) -> float:
        found = dict((unit, float(number)) for number, unit in re.findall(r"(\d+) (h|min|s)", part))
        return found.get("h", 0) + found.get("min", 0) / 60 + found.get("s", 0) / 3600

    low, high = re.search(r"takes (.+?) to (.+?) (?:the first time|\(|;)", text).groups()
    return hours(low), hours(high)


def test_one_arch_is_25_to_40_core_hours_over_the_jobs_plus_a_serial_part() -> None:
    text = estimate.estimate(settings.resolve({"CCA": "8.6"}), cpus=16, memory_bytes=64 * GB)
    # 64 GB at 6 GB a job: 10 jobs, not 16.
    assert "with 10 parallel jobs (16 cores, 64 GB memory: one job per 6 GB)" in text
    low, high = hours_range(text)
    # The serial part (configure, the slowest objects, linking), the image's own steps and
    # torchvision's compile (0.5-1.5 core-hours, after torch's) come on top.
    image = estimate.image_seconds(settings.resolve({"CCA": "8.6"}), compiles=True) / 3600
    assert low == pytest.approx(0.3 + image + 25 / 10 + 0.5 / 10, abs=0.02)
    assert high == pytest.approx(0.6 + image + 40 / 10 + 1.5 / 10, abs=0.02)
    assert "25-40 core-hours for the first arch" in text and "40 GB of disk" in text


def test_further_archs_and_the_arch_specific_kernels_of_9_0_cost_more() -> None:
    one = hours_range(estimate.estimate(settings.resolve({"CCA": "8.6"}), 16, 64 * GB))
    two = hours_range(estimate.estimate(settings.resolve({"CCA": "8.6;8.9"}), 16, 64 * GB))
    hopper = hours_range(estimate.estimate(settings.resolve({"CCA": "8.6;9.0"}), 16, 64 * GB))

    def vision(cca: str) -> tuple[float, float]:
        # torchvision's device code grows with the archs as torch's does (its share of 10 jobs).
        scale = sum(estimate.arch_units(cca, True)) / sum(estimate.arch_units("8.6", True))
        return 0.5 * scale / 10, 1.5 * scale / 10

    more = [two - one for two, one in zip(vision("8.6;8.9"), vision("8.6"), strict=True)]
    assert two[0] == pytest.approx(one[0] + 8 / 10 + more[0], abs=0.02)
    assert two[1] == pytest.approx(one[1] + 15 / 10 + more[1], abs=0.02)
    more = [two - one for two, one in zip(vision("8.6;9.0"), vision("8.6;8.9"), strict=True)]
    assert hopper[0] == pytest.approx(two[0] + 4 / 10 + more[0], abs=0.02)
    assert hopper[1] == pytest.approx(two[1] + 8 / 10 + more[1], abs=0.02)


def test_max_jobs_wins_and_small_memory_bounds_the_jobs() -> None:
    values = settings.resolve({"CCA": "8.6", "MAX_JOBS": "3"})
    assert "with 3 parallel jobs (32 cores, 128 GB memory: MAX_JOBS)" in estimate.estimate(
        values, 32, 128 * GB
    )
    assert "with 2 parallel jobs" in estimate.estimate(
        settings.resolve({"CCA": "8.6"}), 32, 16 * GB
    )
    assert "with 1 parallel job " in estimate.estimate(settings.resolve({"CCA": "8.6"}), 2, 4 * GB)


def test_this_machine_s_record_scales_to_the_archs_and_jobs_of_the_next_build() -> None:
    history = [
        {"stage": "torch-build", "cuda": True, "cca": "8.6", "seconds": 4 * 3600, "jobs": 10,
         "hits": 5, "misses": 7000, "date": "2026-01-02"},
        # A rebuild from ccache says nothing about a first compile.
        {"stage": "torch-build", "cuda": True, "cca": "8.6", "seconds": 600, "jobs": 10,
         "hits": 7000, "misses": 5, "date": "2026-01-03"},
    ]  # fmt: skip
    same = estimate.estimate(settings.resolve({"CCA": "8.6"}), 16, 64 * GB, history)
    assert "this machine compiled torch for 8.6 in 4 h with 10 jobs on 2026-01-02" in same
    assert "so here about 4 h;" in same
    # The record replaces the published 25-40 core-hours (2.9-4.9 h on 10 jobs) in the range:
    # its 4 h and the steps around torch's compile, within the spread said.
    assert "(from this machine's record)" in same and "published figures" not in same
    low, high = hours_range(same)
    assert 0.85 * 4 < low < 4 < high < 1.2 * 4.5
    half_the_jobs = estimate.estimate(settings.resolve({"CCA": "8.6"}), 5, 64 * GB, history)
    assert "so here about 8 h;" in half_the_jobs
    cpu = estimate.estimate(settings.resolve({"CUDA_FROM": "none"}), 16, 64 * GB, history)
    assert "this machine compiled" not in cpu  # a CUDA record says nothing about a CPU build


RECORD = {"cuda": True, "cca": "8.6", "date": "2026-01-02", "mode": "source"}
RECORDED = [
    {"stage": "build", "seconds": 900, "extensions": "; 0 local folders", **RECORD},
    {"stage": "torch-build", "seconds": 600, "jobs": 2, "misses": 900, **RECORD},
    {"stage": "vision-build", "seconds": 100, "jobs": 2, **RECORD},
]


def seconds_said(text: str) -> tuple[float, float]:
    low, high = hours_range(text)
    return low * 3600, high * 3600


@pytest.mark.parametrize(
    ("given", "history", "around"),
    [
        # The same build again: torch's 600 s, vision's 100 s and the 200 s of the rest.
        ({}, RECORDED, 600 + 100 + 200),
        # Two archs (8.6;9.0): torch's and vision's compiles scale by 50/32.5 core-hours.
        ({"CCA": "8.6;9.0"}, RECORDED, (600 + 100) * 50 / 32.5 + 200),
        # A record from before extensions were recorded: the same, none now.
        ({}, [{k: v for k, v in e.items() if k != "extensions"} for e in RECORDED], 900),
    ],
    ids=["same", "two-archs", "older-record"],
)
def test_the_recorded_build_replaces_the_guesses_around_torch_s_compile(
    given, history, around
) -> None:
    text = estimate.estimate(settings.resolve({"CCA": "8.6", **given}), 2, 24 * GB, history)
    assert "(from this machine's record)" in text
    assert seconds_said(text) == pytest.approx((around * 0.85, around * 1.2), abs=60)


def test_other_extensions_or_an_incomplete_record_fall_back_to_the_model() -> None:
    values = settings.resolve({"CCA": "8.6"})
    # An extension that build did not compile: its model (sources not read, 3-60, 1 job of 2),
    # beside the recorded vision step.
    other = {**values, "EXTENSIONS": "torchsort==0.1.10"}
    low, high = (extcompile.extension_seconds(n, 1, 1) for n in extcompile.UNKNOWN_CUDA_SOURCES)
    said = seconds_said(estimate.estimate(other, 2, 24 * GB, RECORDED))
    assert said == pytest.approx(((800 + low) * 0.85, (800 + high) * 1.2), abs=60)
    # A total shorter than its compiles, or none kept: torch's record, the model around it.
    model = estimate.estimate(values, 2, 24 * GB, RECORDED[1:])
    short = [{**RECORDED[0], "seconds": 650}, *RECORDED[1:]]
    assert estimate.estimate(values, 2, 24 * GB, short) == model
    parts = estimate.against_torch_parts(values, 2, [], 0, None)
    around = [estimate.image_seconds(values, True) + t for t in estimate.longest(*parts[:2])]
    expected = ((600 + around[0]) * 0.85, (600 + around[1]) * 1.2)
    assert seconds_said(model) == pytest.approx(expected, abs=60)


def test_a_hand_edited_record_is_read_as_far_as_it_makes_sense() -> None:
    values = settings.resolve({"CCA": "8.6"})
    broken = [
        {"stage": "build", "seconds": None, "extensions": 3, **RECORD},
        {"stage": "torch-build", "seconds": "600", "jobs": "x", "misses": "many", **RECORD},
        {"stage": "extensions-build", "seconds": [1], **RECORD},
    ]
    text = estimate.estimate({**values, "EXTENSIONS": "a==1"}, 2, 24 * GB, broken)
    assert "this machine compiled torch for 8.6 in 10 min with 2 jobs" in text
    assert "this machine's last extension compile took 0 s" in text
    # "true" is not true: no CUDA record, the published figures.
    strings = [{**entry, "cuda": "true"} for entry in RECORDED]
    assert "published figures" in estimate.estimate(values, 2, 24 * GB, strings)


def test_wheels_modes_give_a_range_and_what_this_machine_took() -> None:
    wheels = estimate.estimate(settings.resolve({"BUILD_MODE": "wheels", "CCA": "8.6"}), 2, 8 * GB)
    # Nothing compiles: the image's steps and the CUDA torch's wheels (about 6 GB installed).
    assert wheels.startswith("estimate: BUILD_MODE=wheels takes 3 min to 4 min;"), wheels
    pypi = settings.resolve(
        {"BUILD_MODE": "wheels", "CUDA_FROM": "pypi", "EXTENSIONS": "causal-conv1d==1.5.0"}
    )
    history = [
        {"stage": "build", "mode": "wheels", "seconds": 2305},
        {"stage": "extensions-build", "seconds": 1700},
    ]
    text = estimate.estimate(pypi, 2, 8 * GB, history)
    assert "causal-conv1d: CUDA sources not read, 3-60 taken" in text
    assert "this machine's last BUILD_MODE=wheels build took 38 min" in text
    assert "this machine's last extension compile took 28 min" in text


def test_the_estimate_needs_no_cca_where_nothing_is_compiled_for_one() -> None:
    cpu = estimate.estimate(settings.resolve({"CUDA_FROM": "none"}), 2, 8 * GB)
    assert "for the CPU" in cpu and "4-8 core-hours without CUDA" in cpu
    assert "for the CPU" in estimate.estimate(settings.resolve({"CCA": ""}), 2, 8 * GB)


LOG = """\
#5 [train base 1/2] FROM local/debian:bookworm
#5 DONE 0.1s
#12 [train torch-build 1/1] RUN --mount=type=cache build-wheel.sh
#12 0.512 torchkiln-jobs: pytorch MAX_JOBS=8 (16 cores, 64 GB memory: one job per 6 GB)
#12 3590.1 torchkiln-sccache: pytorch hits=12 misses=7012 remote_hits=0 remote_errors=0 \
uncached=0 local=7012 dist=0 dist_errors=0 servers=- reasons=-
#12 DONE 3600.5s
#13 [train vision-build 1/1] RUN build-wheel.sh
#13 CACHED
#14 [train runtime 4/9] RUN setup-user.sh
#14 DONE 3.0s
"""


def test_a_finished_build_records_its_compile_stages_and_its_total() -> None:
    values = settings.resolve({"CCA": "8.6;9.0", "EXTENSIONS": "b==2 a==1"})
    entries = timings.timing_entries(values, LOG, 3700.2, "2026-02-03", folders=1)
    assert entries == [
        {"stage": "build", "seconds": 3700, "date": "2026-02-03", "mode": "source",
         "cuda": True, "cca": "8.6;9.0", "extensions": "a==1 b==2; 1 local folders"},
        {"stage": "torch-build", "seconds": 3600, "date": "2026-02-03", "mode": "source",
         "cuda": True, "cca": "8.6;9.0", "hits": 12, "misses": 7012, "jobs": 8},
    ]  # fmt: skip


def test_timings_are_kept_and_read_back_and_a_bad_file_is_no_record(tmp_path: Path) -> None:
    assert timings.read_timings(tmp_path) == []
    (tmp_path / ".torchkiln").mkdir()
    timings.record_timings(tmp_path, [{"stage": "build", "seconds": 1}])
    timings.record_timings(tmp_path, [{"stage": "build", "seconds": 2}])
    assert [entry["seconds"] for entry in timings.read_timings(tmp_path)] == [1, 2]
    (tmp_path / ".torchkiln" / timings.TIMINGS_FILE).write_text("{not json")
    assert timings.read_timings(tmp_path) == []


@pytest.mark.parametrize(
    ("values", "gpu_here", "smoke"),
    [
        ({"CCA": "8.6"}, True, "nox -s smoke -- --service train"),
        ({"CCA": "8.6;9.0"}, False,
         "nox -s smoke -- --service train --allow-cpu --expect-cca '8.6;9.0'"),
        ({"CUDA_FROM": "none"}, True, "nox -s smoke -- --service train --allow-cpu"),
        ({"CUDA_FROM": "none"}, False, "nox -s smoke -- --service train --allow-cpu"),
    ],
    ids=["gpu", "no-gpu-cuda-build", "cpu-build-gpu-host", "cpu-build-no-gpu"],
)  # fmt: skip
def test_next_steps_are_what_works_on_this_machine(values, gpu_here, smoke) -> None:
    import shlex

    steps = buildsummary.next_steps("train", True, settings.resolve(values), gpu_here)
    assert [shlex.join(step) for step in steps] == [
        "docker compose exec train zsh",
        smoke,
        "invoke wheels --service train",
    ]


def test_the_summary_names_the_log_and_the_next_steps(tmp_path: Path) -> None:
    plan = build.plan(
        tmp_path, inputs.BuildOptions(), environ={}, dotenv={**DOTENV, "CUDA_FROM": "none"},
        cwd=tmp_path,
    )  # fmt: skip
    text = buildsummary.summary(plan, 4000, 2 * 10**9, LOG, gpu_here=False)
    assert "build time:  1 h 7 min" in text
    assert "log:         .torchkiln/build-train.log" in text
    assert "  nox -s smoke -- --service train --allow-cpu" in text


CERT_LOGS = {
    "pip": "#9 3.1 Could not fetch URL https://h/simple/x/: There was a problem confirming the "
    "ssl certificate: ... [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
    "self-signed certificate in certificate chain (_ssl.c:1006)",
    "apt": "#7 1.2 Err:1 https://h/debian bookworm InRelease\n#7 1.2   Certificate verification "
    "failed: The certificate is NOT trusted. The certificate issuer is unknown.",
    "git": "#8 0.9 fatal: unable to access 'https://h/x.git/': SSL certificate problem: "
    "self-signed certificate in certificate chain",
    "uv": "#10 2.0 error: invalid peer certificate: UnknownIssuer",
}


@pytest.mark.parametrize("tool", sorted(CERT_LOGS))
def test_a_certificate_failure_ends_with_the_ca_bundle_to_add(tool: str) -> None:
    result = Streamed(17, CERT_LOGS[tool] + "\n#9 ERROR: process did not complete\n")
    line = buildsummary.failure_line(
        "docker compose build train", result, ".torchkiln/build-train.log", "", "/etc/host.pem"
    )
    assert "\n" not in line
    assert "(the whole output is in .torchkiln/build-train.log)" in line
    assert line.endswith(
        "give the build its CA bundle: --ca-bundle /etc/host.pem, the one this host uses "
        "(invoke doctor's tls row says which one verifies the index)"
    )
    given = buildsummary.failure_line("docker compose build train", result, ca_bundle="/my/ca.pem")
    assert "with the CA bundle given (/my/ca.pem)" in given and "--ca-bundle FILE" in given


def test_no_certificate_word_means_no_ca_bundle_advice() -> None:
    line = buildsummary.failure_line("build", Streamed(1, "#9 ERROR: compiler crashed\n"))
    assert "--ca-bundle" not in line


def test_a_dry_run_writes_nothing_a_later_command_reads(tmp_path: Path, monkeypatch) -> None:
    plan = build.plan(tmp_path, inputs.BuildOptions(cca="9.0"), environ={}, dotenv=DOTENV,
                      cwd=tmp_path)  # fmt: skip
    # A real build ran before: its record and override must stay as they were.
    state = tmp_path / ".torchkiln"
    state.mkdir()
    record = {"service": "train", "inputs": {"cca": "8.6", "torch": "2.13.0"}}
    (state / "build-train.json").write_text(json.dumps(record))
    (state / "build-train.yaml").write_text("real build's override")
    before = {path.name: path.read_bytes() for path in state.iterdir()}
    monkeypatch.setattr(doctor, "require_ready", lambda values, up, service, **_: None)
    context = MockContext(config=Config(overrides={"run": {"dry": True}}), run=Result())
    build.build_service(context, plan)
    after = {path.name: path.read_bytes() for path in state.iterdir()}
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {"dry-build-train.yaml"}
    options, note = inputs.with_recorded_inputs(tmp_path, inputs.BuildOptions())
    assert options.cca == "8.6" and options.torch == "2.13.0", note


@pytest.mark.parametrize(
    "given",
    [
        {"BUILD_MODE": "wheels", "CUDA_FROM": "image"},
        {"BUILD_MODE": "wheels", "CUDA_FROM": "pypi", "EXTENSIONS": "causal-conv1d==1.5.2"},
        {"BUILD_MODE": "wheels", "CUDA_FROM": "none"},
        {"BUILD_MODE": "torch-wheel", "CCA": "8.6"},
        {"BUILD_MODE": "source", "CCA": "8.6"},
        {"BUILD_MODE": "source", "CCA": "8.6;8.9;9.0"},
        {"BUILD_MODE": "source", "CUDA_FROM": "none"},
    ],
    ids=[
        "wheels",
        "wheels-pypi-extension",
        "cpu",
        "torch-wheel",
        "source",
        "three-archs",
        "cpu-src",
    ],
)
def test_the_build_and_doctor_say_the_same_disk_figure(given):
    from torchkiln.engine import EngineFacts

    values = settings.resolve({"CCA": "8.6", **given})
    said = re.search(r"needs about (\d+) GB of disk", estimate.estimate(values, 2, 8 * GB))
    assert said, estimate.estimate(values, 2, 8 * GB)
    tiny = EngineFacts(server_version="26.1", root_dir="/var/lib/docker", free_bytes=GB)
    row = doctor.check_disk(tiny, values["BUILD_MODE"], values=values)
    assert row.detail.endswith(f"needs about {said[1]} GB"), (row.detail, said[0])
    assert int(said[1]) == estimate.disk_gb(values)

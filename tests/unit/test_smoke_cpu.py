"""Unit tests for the in-image checks: probes, report, numerics, workers, and whole runs of
`python -m torchkiln.smoke` / `torchkiln.bench` on a CPU-only torch."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from torchkiln.inimage import bench, numerics, probe, report, smoke, workers

SRC = Path(smoke.__file__).resolve().parents[2]


def run_module(
    module: str, *args: str, extra_path: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m module` the way the images do, with only src on the path."""
    env = dict(os.environ)
    paths = [str(extra_path)] if extra_path else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(SRC)])
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


# --- probes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu Oct 30 2025\n"
            "GCC version:  gcc version 12.2.0",
            "580.159.04",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build",
            "580.65.06",
        ),
        ("535.104.05\n535.104.05\n", "535.104.05"),
        ("no driver here", None),
    ],
)
def test_parse_driver_version(text: str, version: str | None) -> None:
    assert probe.parse_driver_version(text) == version


# --- diagnose ---------------------------------------------------------------------------------

HEALTHY = {
    "torch_cuda": "13.0",
    "device_nodes": True,
    "visible_devices": "all",
    "driver": "580.159.04",
    "torch_error": "CUDA driver initialization failed",
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"torch_cuda": None, "device_nodes": False, "driver": "400.1"}, "CPU-only build"),
        ({"device_nodes": False, "visible_devices": "void"}, "compose/cpu.yaml"),
        ({"device_nodes": False}, "NVIDIA runtime"),
        ({"visible_devices": "void", "driver": "400.1"}, "NVIDIA_VISIBLE_DEVICES is void"),
        ({"visible_devices": "none"}, "NVIDIA_VISIBLE_DEVICES is none"),
        ({"visible_devices": ""}, "NVIDIA_VISIBLE_DEVICES is empty"),
        ({"driver": "570.86.15"}, "older than CUDA 13.0 needs (>= 580.65.06)"),
        ({"cuda_visible_devices": ""}, "CUDA_VISIBLE_DEVICES"),
        ({}, "torch says: CUDA driver initialization failed"),
        ({"driver": None}, "torch says: CUDA driver initialization failed"),
        ({"visible_devices": None}, "torch says:"),  # unset outside a container is fine
        ({"torch_error": ""}, "gave no reason"),
    ],
)
def test_diagnose_order(changes: dict, expected: str) -> None:
    assert expected in probe.diagnose(**{**HEALTHY, **changes})


# --- report -----------------------------------------------------------------------------------


def test_report_ok_ignores_skips_warnings_and_optional_failures() -> None:
    result = report.Report(
        checks=[
            report.Check("a", report.PASS, ""),
            report.Check("b", report.SKIP, "1 GPU: all-reduce needs 2"),
            report.Check("c", report.WARN, "PTX JIT"),
            report.Check("d", report.FAIL, "broken", required=False),
        ]
    )
    assert result.ok
    result.checks.append(report.Check("e", report.FAIL, "broken"))
    assert not result.ok
    data = json.loads(report.report_json(result))
    assert data["ok"] is False
    assert {c["name"] for c in data["checks"]} == set("abcde")
    assert set(data["checks"][0]) == {"name", "status", "detail", "seconds", "required"}
    assert "FAILED: e" in report.render_table(result)


def test_judge_never_passes_nan() -> None:
    assert "1.0e-03" in numerics.judge({"x": 1e-3}, 1e-2)
    for bad in (float("nan"), float("inf"), 0.5):
        with pytest.raises(report.CheckFailed):
            numerics.judge({"x": bad}, 1e-2)


def test_runner_turns_exceptions_into_rows() -> None:
    runner = report.Runner()

    def boom() -> str:
        raise RuntimeError("line one\n  line two")

    def skip() -> str:
        raise report.CheckSkipped("not here")

    assert runner.run("boom", boom).detail == "RuntimeError: line one line two"
    assert runner.run("skip", skip).status == report.SKIP
    assert runner.run("ok", lambda: "fine").status == report.PASS


def test_cudnn_version_format() -> None:
    assert probe.format_cudnn_version(91002) == "9.10.2"
    assert probe.format_cudnn_version(8907) == "8.9.7"
    assert probe.format_cudnn_version(91300) == "9.13.0"


def test_public_version() -> None:
    assert probe.public_version("2.11.0+cu130") == "2.11.0"
    assert probe.public_version("2.11.0") == "2.11.0"


# --- whole runs -------------------------------------------------------------------------------


def test_missing_torch_is_one_failing_check(tmp_path: Path) -> None:
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('libtorch_cuda.so: cannot open')\n")
    result = run_module("torchkiln.smoke", "--json", extra_path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is False
    # Why torch does not import is often a library it cannot find: the link audit still runs.
    assert [c["name"] for c in data["checks"]] == ["torch import", "link audit"]
    assert "libtorch_cuda.so" in data["checks"][0]["detail"]
    assert data["checks"][1]["status"] in ("pass", "fail")
    assert isinstance(data["links"], list) and data["links"]

    result = run_module("torchkiln.bench", extra_path=tmp_path)
    assert result.returncode == bench.EXIT_NO_GPU
    assert result.stderr.strip().startswith("bench needs a CUDA GPU: torch does not import")


def no_gpu_torch() -> object:
    """Return torch when it is importable and sees no GPU; skip the test otherwise."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU-only paths are not exercised")
    return torch


def test_smoke_allow_cpu_passes() -> None:
    torch = no_gpu_torch()
    result = run_module("torchkiln.smoke", "--allow-cpu", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["torch"] == torch.__version__
    statuses = {c["name"]: c["status"] for c in data["checks"]}
    assert statuses["torch import"] == "pass"
    assert statuses["cpu matmul fp32"] == "pass"
    assert statuses["cpu conv2d fwd/bwd"] == "pass"
    assert statuses["cpu sdpa bf16"] == "pass"
    for name in smoke.CUDA_CHECKS:
        assert statuses[name] == "skip"
    details = {c["name"]: c["detail"] for c in data["checks"]}
    assert details["matmul bf16"].startswith("--allow-cpu")
    # The link audit and torch.compile need no GPU.
    assert statuses["link audit"] == "pass", details["link audit"]
    assert re.match(r"\d+ files need \d+ libraries; all resolve", details["link audit"])
    assert {row["package"] for row in data["links"]} >= {"torch"}
    assert statuses["torch.compile"] == "pass", details["torch.compile"]
    assert details["torch.compile"].startswith(
        "Inductor C++ kernel on cpu: sin(x)*2+1 matches eager"
    )


def test_smoke_without_gpu_fails_with_diagnosis() -> None:
    torch = no_gpu_torch()
    result = run_module("torchkiln.smoke", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    cuda = next(c for c in data["checks"] if c["name"] == "CUDA available")
    assert cuda["status"] == "fail"
    assert cuda["detail"]
    if torch.version.cuda is None:
        assert "CPU-only build" in cuda["detail"]


def test_smoke_table_and_expectations() -> None:
    torch = no_gpu_torch()
    version = probe.public_version(torch.__version__)
    result = run_module(
        "torchkiln.smoke", "--allow-cpu", "--expect-torch", version, "--expect-cca", "9.0"
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[1].split() == ["check", "status", "detail"]
    assert "torch version" in result.stdout
    assert "OK" in result.stdout.splitlines()[-1]

    result = run_module("torchkiln.smoke", "--allow-cpu", "--expect-torch", "1.0.0", "--json")
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["torch version"]["status"] == "fail"
    assert "expected 1.0.0" in checks["torch version"]["detail"]


def test_compile_failure_without_a_compiler_names_the_fix(tmp_path: Path) -> None:
    no_gpu_torch()
    env_cxx = dict(os.environ, CXX=str(tmp_path / "no-such-g++"))
    result = subprocess.run(
        [sys.executable, "-m", "torchkiln.inimage.workers", "compile"],
        capture_output=True,
        text=True,
        env={**env_cxx, "PYTHONPATH": str(SRC)},
        timeout=300,
        check=False,
    )
    verdict = json.loads(result.stdout.splitlines()[-1])
    assert verdict["status"] == "fail"
    assert verdict["detail"].startswith("no working C++ compiler (g++) in this image: install g++")


TOOLS = {
    "g++": "/usr/bin/g++",
    "gcc": "/usr/bin/gcc",
    "Python.h": "/usr/include/python3.12/Python.h",
    "include": "/usr/include/python3.12",
    "python": "python3.12",
}


@pytest.mark.parametrize(
    ("text", "device", "missing", "expected"),
    [
        (
            "InductorError: InvalidCxxCompiler: No working C++ compiler found in "
            "torch._inductor.config.cpp.cxx: (None, 'g++')",
            "cpu",
            (),
            "no working C++ compiler (g++) in this image: install g++",
        ),
        (
            "CppCompileError: C++ compile error ... fatal error: Python.h: No such file or "
            "directory",
            "cpu",
            (),
            "no Python.h for this Python (looked in /usr/include/python3.12): install "
            "python3.12-dev",
        ),
        (
            "CalledProcessError: Command '['/usr/bin/gcc', 'cuda_utils.c']' returned non-zero "
            "exit status 1.",
            "cuda",
            ("Python.h",),
            "no Python.h for this Python",
        ),
        (
            "RuntimeError: Failed to find C compiler. Please specify via CC environment variable",
            "cuda",
            (),
            "no C compiler for Triton's launcher: install gcc",
        ),
        (
            "RuntimeError: Cannot find a working triton installation.",
            "cuda",
            (),
            "Triton is not installed: pip install the triton version torch requires",
        ),
        ("RuntimeError: something else", "cpu", ("g++",), "no working C++ compiler (g++)"),
        ("RuntimeError: something else", "cuda", (), "torch.compile on cuda failed: RuntimeError"),
    ],
    ids=["no g++", "no Python.h", "triton launcher", "no gcc", "no triton", "tools", "other"],
)
def test_compile_diagnosis(text: str, device: str, missing: tuple, expected: str) -> None:
    tools = {**TOOLS, **dict.fromkeys(missing, "")}
    assert workers.compile_diagnosis(text, device, tools).startswith(expected)


def test_compile_check_uses_fresh_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/kept")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with workers.fresh_compile_caches():
        inductor = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        assert inductor != "/kept" and os.path.isdir(os.path.dirname(inductor))
        assert os.path.dirname(os.environ["TRITON_CACHE_DIR"]) == os.path.dirname(inductor)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/kept"
    assert "TRITON_CACHE_DIR" not in os.environ
    assert not os.path.exists(os.path.dirname(inductor))


def test_a_compile_worker_that_dies_or_hangs_fails_the_row(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = workers.CompileInBackground.__new__(workers.CompileInBackground)
    worker.timeout, worker.timed_out = 240, True
    worker.proc = subprocess.Popen(
        [sys.executable, "-c", "pass"], stdout=subprocess.PIPE, text=True
    )
    monkeypatch.setattr(worker, "output", lambda: None)
    with pytest.raises(report.CheckFailed, match="did not finish within 240 s"):
        worker.result(None, "cpu")
    worker.timed_out = False
    worker.proc.wait()
    with pytest.raises(report.CheckFailed, match="worker exited 0 without a verdict"):
        worker.result(None, "cpu")


def test_bench_without_gpu_exits_2_with_one_line() -> None:
    no_gpu_torch()
    result = run_module("torchkiln.bench")
    assert result.returncode == bench.EXIT_NO_GPU
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("bench needs a CUDA")]
    assert len(ours) == 1
    assert ours[0].startswith("bench needs a CUDA GPU: ")


def test_all_reduce_plumbing_on_gloo() -> None:
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch built without distributed")
    assert (
        workers.AllReduce(2, timeout=120, backend="gloo").result().startswith("2 ranks each got 3")
    )


def test_torchvision_check_runs_in_the_background_worker() -> None:
    torch = pytest.importorskip("torch")
    vision = workers.TorchvisionInBackground()
    try:
        assert vision.proc is not None
        outcome = vision.verdict()
        assert outcome is not None and outcome["device"] == "cpu"
    finally:
        vision.stop()
    installed = importlib.util.find_spec("torchvision") is not None
    again = workers.TorchvisionInBackground()
    if installed:
        assert "torchvision" in again.result(torch, "cpu")
    else:
        with pytest.raises(report.CheckSkipped, match="not installed"):
            again.result(torch, "cpu")


def test_torchvision_worker_for_another_device_is_not_trusted(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    vision = workers.TorchvisionInBackground()
    vision.stop()
    monkeypatch.setattr(vision, "verdict", lambda: {"device": "cpu", "status": "pass"})
    monkeypatch.setattr(workers, "check_torchvision", lambda torch, device: f"ran on {device}")
    assert vision.result(torch, "cuda") == "ran on cuda"


@pytest.mark.parametrize(
    ("check", "status"),
    [
        (lambda: "fp32 rel. error 1e-7", report.PASS),
        (lambda: (_ for _ in ()).throw(report.CheckWarned("slow first start")), report.WARN),
        (lambda: (_ for _ in ()).throw(report.CheckFailed("conv differs")), report.FAIL),
        (lambda: (_ for _ in ()).throw(RuntimeError("cuDNN error")), report.FAIL),
    ],
    ids=["pass", "warn", "fail", "exception"],
)
def test_a_check_begun_in_a_thread_keeps_its_rows_meaning(check, status) -> None:
    """cuDNN's row starts early in a thread: the row reads as it would have in line."""
    in_line, early = report.Runner(), report.Runner()
    in_line.run("cuDNN conv2d fwd/bwd", check)
    early.run("cuDNN conv2d fwd/bwd", report.InThread(check).result)
    (first,), (second,) = in_line.report.checks, early.report.checks
    assert (second.status, second.detail) == (first.status, first.detail)
    assert second.status == status

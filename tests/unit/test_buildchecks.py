"""The build's own checks, as invoke build's summary reports them from BuildKit's plain log."""

from __future__ import annotations

from torchkiln import buildchecks

PARITY = (
    "lost USE_NCCL=OFF; the official wheel has it: install NCCL (nvidia-nccl-cu13) and USE_NCCL=1"
)
LOG = f"""\
#31 61.20 torchkiln-wheelcheck: CUDA 13.0, libtorch_cuda.so holds sm_86 (asked 8.6)
#31 61.90 torchkiln-parity: {PARITY}
#31 62.00 torchkiln-memory: pytorch peak=2560 MB MAX_JOBS=2
#45 0.195 torchkiln-closure: libopenblas0-pthread
#51 0.173 link audit of site-packages (LD_LIBRARY_PATH=unset)
#51 0.174 OK  (23 files, 12 libraries needed, 0.0 s)
"""


def test_each_check_becomes_a_summary_line() -> None:
    lines = buildchecks.summary_lines(LOG)
    assert lines == [
        "torch:       CUDA 13.0, libtorch_cuda.so holds sm_86 (asked 8.6)",
        "parity:      WARNING lost USE_NCCL=OFF; the official wheel has it: install NCCL "
        "(nvidia-nccl-cu13) and USE_NCCL=1",
        "closure:     installed for what the build linked: libopenblas0-pthread",
        "memory:      pytorch peaked at 2.5 GB with MAX_JOBS=2",
        "link audit:  every library resolves (23 files, 12 libraries needed)",
    ]


def test_a_failed_link_audit_is_named() -> None:
    log = (
        "#51 0.2 FAILED: libopenblas.so.0 (needed by torch/lib/libtorch_cpu.so)  "
        "(3 files, 4 libraries needed, 0.0 s)\n"
    )
    (line,) = buildchecks.summary_lines(log)
    assert line.startswith("link audit:  FAILED: libopenblas.so.0")


def test_a_cached_build_says_nothing_of_checks_it_did_not_run() -> None:
    assert buildchecks.summary_lines("#12 CACHED\n") == []

"""Check a PyTorch install on the GPU: `python -m torchkiln.smoke [--json] [--allow-cpu]`.

Runs inside the built images, so it imports only the standard library and torch (torchvision
and torchaudio when present). Every check catches its own errors and reports them as a row.
`--audit-only [PATH ...]` runs just the arch audit (torchkiln.inimage.audit) and the link audit
(torchkiln.inimage.links), without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torchkiln.inimage import archs as arch_rules
from torchkiln.inimage import audit as arch_audit
from torchkiln.inimage import links as link_audit
from torchkiln.inimage.ncclnet import check_nccl_network, start_probe
from torchkiln.inimage.numerics import (
    TOL_FP32,
    TOL_HALF,
    TOL_SDPA,
    TOL_TF32,
    conv_errors,
    judge,
    matmul_error,
    sdpa_error,
)
from torchkiln.inimage.probe import (
    describe_devices,
    diagnose_environment,
    format_cudnn_version,
    public_version,
    read_driver_version,
    torch_arch_list,
)
from torchkiln.inimage.report import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    CheckFailed,
    CheckSkipped,
    CheckWarned,
    InThread,
    Report,
    Runner,
    render_table,
    report_json,
)
from torchkiln.inimage.workers import (
    AllReduce,
    CompileInBackground,
    TorchvisionInBackground,
    check_compile,
    check_torchvision,
    import_optional,
)

CUDA_CHECKS = (
    "arch coverage",
    "cuDNN conv2d fwd/bwd",
    "matmul fp32",
    "matmul tf32",
    "matmul bf16",
    "matmul fp16",
    "matmul autocast bf16",
    "sdpa bf16",
    "sdpa fp16",
    "nccl",
    "nccl all-reduce",
)


def check_torch_version(torch: Any, expected: str) -> str:
    """Compare torch's public version with the one the image was built for."""
    found = public_version(torch.__version__)
    if found != public_version(expected):
        hint = ""
        if re.search(r"a0$", found):
            hint = " (a source build without PYTORCH_BUILD_VERSION reports X.Y.Za0)"
        raise CheckFailed(f"torch is {torch.__version__}, expected {expected}{hint}")
    return f"{torch.__version__} matches {expected}"


def check_cuda_build(torch: Any) -> str:
    """Refuse a torch without CUDA."""
    if torch.version.cuda is None:
        hip = getattr(torch.version, "hip", None)
        kind = f"ROCm/HIP {hip} build" if hip else "CPU-only build"
        raise CheckFailed(f"{kind}: torch.version.cuda is None")
    return f"CUDA {torch.version.cuda}"


def check_gpu_arch(torch: Any, index: int, archs: list[str], device: dict[str, Any]) -> str:
    """Check the arch list covers one GPU and that a kernel really runs there."""
    cap = torch.cuda.get_device_capability(index)
    how = arch_rules.covers(cap, archs)
    label = f"{device['name']} ({cap[0]}.{cap[1]})"
    device["coverage"] = how
    if how is None:
        raise CheckFailed(
            f"{label} not covered by arch list {' '.join(archs) or '(empty)'}: rebuild with "
            f"CCA={cap[0]}.{cap[1]}"
        )
    # A launch proves the driver accepts the code, which the list alone cannot.
    t = torch.arange(1024, device=f"cuda:{index}", dtype=torch.float32)
    total = float((t * 2).sum().item())
    if total != 1023 * 1024:
        raise CheckFailed(f"{label}: a kernel gave {total}, expected {1023 * 1024}")
    if how.startswith("PTX"):
        raise CheckWarned(f"{label}: {how} (slow first start; build with CCA={cap[0]}.{cap[1]})")
    return f"{label}: {how}"


def check_arch_audit(
    report: Report, expected: str | None, files: arch_audit.CollectInBackground | None = None
) -> str:
    """Check every package's CUDA code in site-packages runs on each visible GPU and each
    --expect-cca item; the per-package rows go into the report."""
    targets = arch_audit.merge_targets(
        arch_audit.gpu_targets(report.devices),
        arch_audit.cca_targets(expected) if expected else [],
    )
    if not targets:
        raise CheckSkipped("no GPU and no --expect-cca: nothing to audit against")
    packages = files.result() if files else arch_audit.collect([])
    rows = arch_audit.judge_all(packages, targets)
    report.audit = [asdict(row) for row in rows]
    if not rows:
        raise CheckSkipped("no CUDA code in site-packages (CPU-only torch?)")
    text = arch_audit.summary(rows, targets)
    status = arch_audit.overall(rows)
    if status == FAIL:
        raise CheckFailed(text)
    if status == WARN:
        raise CheckWarned(text)
    return text


def check_link_audit(report: Report, started: link_audit.AuditInBackground | None = None) -> str:
    """Check every NEEDED library of every ELF file in site-packages resolves as the dynamic
    linker would; the per-package rows go into the report."""
    data = started.result() if started else link_audit.audit_data(link_audit.audit())
    report.links = data["packages"]
    text = link_audit.summary(data)
    if not data["ok"]:
        raise CheckFailed(text)
    if data.get("warned"):
        raise CheckWarned(text)
    return text


def compile_result(torch: Any, device: str, started: CompileInBackground | None) -> str:
    """The torch.compile check's verdict, from the background worker when there is one."""
    return started.result(torch, device) if started else check_compile(torch, device)


def check_expected_cca(archs: list[str], expected: str) -> str:
    """Check every arch asked for at build time is in torch's arch list."""
    wanted = arch_rules.expected_binaries(arch_rules.parse_cca(expected))
    missing = [arch for arch in wanted if arch not in archs]
    if missing:
        raise CheckFailed(
            f"missing {' '.join(missing)} from arch list {' '.join(archs) or '(empty)'}"
        )
    return f"{' '.join(wanted)} in arch list {' '.join(archs)}"


def check_cudnn(torch: Any) -> str:
    """Check cuDNN is there and conv2d forward/backward on CUDA matches fp64 on the CPU."""
    cudnn = torch.backends.cudnn
    if not cudnn.is_available():
        raise CheckFailed("cuDNN not available in this build (USE_CUDNN=0?)")
    if not cudnn.enabled:
        raise CheckFailed("torch.backends.cudnn.enabled is False")
    version = format_cudnn_version(int(cudnn.version()))
    return f"cuDNN {version}; fp32 " + judge(conv_errors(torch, "cuda"), TOL_FP32)


def check_matmul(torch: Any, device: str, mode: str, tol: float, want: str) -> str:
    """Check one matmul precision mode against fp64 and that it returned the expected dtype."""
    err, dtype = matmul_error(torch, device, mode)
    if dtype != want:
        raise CheckFailed(f"output dtype {dtype}, expected {want} (autocast not applied?)")
    return judge({dtype: err}, tol)


def check_sdpa(torch: Any, device: str, dtype: Any) -> str:
    """Check SDPA with and without a causal mask in one dtype."""
    name = str(dtype).removeprefix("torch.")
    errors = {
        "full": sdpa_error(torch, device, dtype, causal=False),
        "causal": sdpa_error(torch, device, dtype, causal=True),
    }
    return judge(errors, TOL_SDPA[name])


def check_nccl(torch: Any) -> str:
    """Check NCCL is compiled in and report its version."""
    import torch.cuda.nccl  # a submodule torch.cuda does not import by itself
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        raise CheckFailed("torch.distributed has no NCCL backend (USE_NCCL=0 or USE_DISTRIBUTED=0)")
    version = torch.cuda.nccl.version()
    text = ".".join(str(p) for p in version) if isinstance(version, tuple) else str(version)
    return f"NCCL {text}"


def start_all_reduce(torch: Any) -> AllReduce | None:
    """Start the all-reduce ranks early when there are >= 2 GPUs (None: none, or it failed)."""
    count = torch.cuda.device_count()
    if count < 2:
        return None
    try:
        return AllReduce(count)
    except Exception:  # the check starts it again and reports the error
        return None


def check_nccl_all_reduce(torch: Any, started: AllReduce | None = None) -> str:
    """All-reduce across every visible GPU, one process each."""
    count = torch.cuda.device_count()
    if count < 2:
        raise CheckSkipped(f"{count} GPU: all-reduce needs 2")
    return (started or AllReduce(count)).result()


def torchvision_result(torch: Any, device: str, vision: TorchvisionInBackground | None) -> str:
    """The torchvision check's verdict, from the background worker when there is one."""
    return vision.result(torch, device) if vision else check_torchvision(torch, device)


def check_torchaudio() -> str:
    """Report torchaudio's version when it is installed."""
    torchaudio = import_optional("torchaudio")
    return f"torchaudio {torchaudio.__version__}"


def check_cuda_available(torch: Any, runner: Runner) -> str:
    """Check CUDA works, or raise with a diagnosis of why not."""
    if torch.version.cuda is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        runner.report.devices = describe_devices(torch)
        torch.zeros(1, device="cuda").add_(1)  # create the context here, not in a later check
        torch.cuda.synchronize()
        return f"{count} GPU{'s' if count != 1 else ''}"
    raise CheckFailed(diagnose_environment(torch))


def run_cuda_checks(
    torch: Any, runner: Runner, args: argparse.Namespace, workers: Background | None = None
) -> None:
    """Run the checks that need a working GPU."""
    vision = workers.vision if workers else None
    files = workers.files if workers else None
    started = start_all_reduce(torch)
    network = start_probe(torch)
    # cuDNN's first conv loads its libraries and picks algorithms (seconds on a fresh machine):
    # begun now, beside the arch rows and the audits, which mostly wait for their workers.
    cudnn = InThread(lambda: check_cudnn(torch))
    archs = torch_arch_list(torch)
    for device in runner.report.devices:
        index = device["index"]
        runner.run(
            "arch coverage" + (f" gpu{index}" if len(runner.report.devices) > 1 else ""),
            lambda i=index, d=device: check_gpu_arch(torch, i, archs, d),
        )
    runner.run("arch audit", lambda: check_arch_audit(runner.report, args.expect_cca, files))
    runner.run("link audit", lambda: check_link_audit(runner.report, workers and workers.links))
    if args.expect_cca:
        runner.run("expected CCA", lambda: check_expected_cca(archs, args.expect_cca))
    runner.run("cuDNN conv2d fwd/bwd", cudnn.result)
    for mode, tol, want in (
        ("fp32", TOL_FP32, "float32"),
        ("tf32", TOL_TF32, "float32"),
        ("bf16", TOL_HALF, "bfloat16"),
        ("fp16", TOL_HALF, "float16"),
        ("autocast-bf16", TOL_HALF, "bfloat16"),
    ):
        name = "matmul " + mode.replace("-", " ")
        runner.run(name, lambda m=mode, t=tol, w=want: check_matmul(torch, "cuda", m, t, w))
    runner.run("sdpa bf16", lambda: check_sdpa(torch, "cuda", torch.bfloat16))
    runner.run("sdpa fp16", lambda: check_sdpa(torch, "cuda", torch.float16))
    runner.run("nccl", lambda: check_nccl(torch))
    runner.run("nccl all-reduce", lambda: check_nccl_all_reduce(torch, started))
    runner.run("NCCL network", lambda: check_nccl_network(torch, gpu=True, probe=network))
    runner.run("torchvision", lambda: torchvision_result(torch, "cuda", vision))
    runner.run("torchaudio", check_torchaudio, required=False)
    compiling = workers.compile if workers else None
    runner.run("torch.compile", lambda: compile_result(torch, "cuda", compiling))


def run_cpu_checks(
    torch: Any, runner: Runner, vision: TorchvisionInBackground | None = None
) -> None:
    """Run the CPU subset used with --allow-cpu."""
    runner.run("cpu conv2d fwd/bwd", lambda: "fp32 " + judge(conv_errors(torch, "cpu"), TOL_FP32))
    runner.run("cpu matmul fp32", lambda: check_matmul(torch, "cpu", "fp32", TOL_FP32, "float32"))
    runner.run("cpu matmul bf16", lambda: check_matmul(torch, "cpu", "bf16", TOL_HALF, "bfloat16"))
    runner.run("cpu sdpa fp32", lambda: check_sdpa(torch, "cpu", torch.float32))
    runner.run("cpu sdpa bf16", lambda: check_sdpa(torch, "cpu", torch.bfloat16))
    runner.run("torchvision", lambda: torchvision_result(torch, "cpu", vision))
    runner.run("torchaudio", check_torchaudio, required=False)


@dataclass
class Background:
    """The checks smoke starts in other processes before it imports torch."""

    vision: TorchvisionInBackground
    files: arch_audit.CollectInBackground
    links: link_audit.AuditInBackground
    compile: CompileInBackground

    @classmethod
    def start(cls) -> Background:
        """Start every worker at once, so their imports and reads overlap."""
        return cls(
            TorchvisionInBackground(),
            arch_audit.CollectInBackground(),
            link_audit.AuditInBackground(),
            CompileInBackground(),
        )

    def stop(self) -> None:
        """End the workers whose answers were not taken."""
        for worker in (self.vision, self.files, self.links, self.compile):
            worker.stop()


def run_all(args: argparse.Namespace) -> Report:
    """Run every check that applies here and return the report."""
    start = time.perf_counter()
    workers = Background.start()
    try:
        return _run_all(args, start, workers)
    finally:
        workers.stop()


def _run_all(args: argparse.Namespace, start: float, workers: Background | None = None) -> Report:
    runner = Runner()
    report = runner.report
    torch_box: list[Any] = []
    vision = workers.vision if workers else None
    files = workers.files if workers else None
    links = workers.links if workers else None
    compiling = workers.compile if workers else None

    def import_torch() -> str:
        import torch

        torch_box.append(torch)
        return f"torch {torch.__version__} from {os.path.dirname(torch.__file__)}"

    runner.run("torch import", import_torch)
    if not torch_box:
        # Why torch does not import is often a library it cannot find: name it.
        runner.run("link audit", lambda: check_link_audit(report, links))
        report.seconds = time.perf_counter() - start
        return report
    torch = torch_box[0]
    report.torch = torch.__version__
    report.cuda = torch.version.cuda
    report.driver = read_driver_version()

    if args.expect_torch:
        runner.run("torch version", lambda: check_torch_version(torch, args.expect_torch))
    cpu_build = torch.version.cuda is None
    if cpu_build and args.allow_cpu:
        runner.add("CUDA build", SKIP, "--allow-cpu: CPU-only build (torch.version.cuda is None)")
    else:
        runner.run("CUDA build", lambda: check_cuda_build(torch))

    cuda = runner.run("CUDA available", lambda: check_cuda_available(torch, runner))
    if cuda.status == PASS:
        run_cuda_checks(torch, runner, args, workers)
    else:
        reason = "--allow-cpu" if args.allow_cpu else "CUDA not available"
        if args.allow_cpu:
            cuda.status, cuda.detail = SKIP, f"--allow-cpu: {cuda.detail}"
        for name in CUDA_CHECKS:
            runner.add(name, SKIP, reason)
        if args.expect_cca:
            if cpu_build:
                runner.add("expected CCA", SKIP, reason)
            else:
                # The arch list is in the binary, so a build can be checked without a GPU.
                runner.run(
                    "expected CCA",
                    lambda: check_expected_cca(torch_arch_list(torch), args.expect_cca),
                )
        # The code in the files says which GPUs the image will run on, GPU or not.
        runner.run("arch audit", lambda: check_arch_audit(report, args.expect_cca, files))
        runner.run("link audit", lambda: check_link_audit(report, links))
        runner.run("NCCL network", lambda: check_nccl_network(torch, gpu=False))
        if args.allow_cpu:
            run_cpu_checks(torch, runner, vision)
        # Without a GPU, torch.compile is checked on the CPU (Inductor's C++ backend).
        runner.run("torch.compile", lambda: compile_result(torch, "cpu", compiling))
    report.seconds = time.perf_counter() - start
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m torchkiln.smoke",
        description="Check that torch works on this machine's GPUs.",
        epilog="exit status: 0 every required check passes, 1 one fails, 2 bad command line input",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="without a usable GPU, run a CPU subset and skip the CUDA checks",
    )
    parser.add_argument("--expect-torch", metavar="VER", help="torch version the image must have")
    parser.add_argument(
        "--expect-cca", metavar="X", help="archs the build must contain, e.g. '8.6;9.0a'"
    )
    parser.add_argument(
        "--audit-only",
        action="store_true",
        help="only audit site-packages (or PATHs: files, folders, .whl): the CUDA code runs on "
        "each visible GPU and --expect-cca item, and every ELF file's libraries resolve; does "
        "not import torch",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="with --audit-only: shared objects, folders or wheels to audit instead of "
        "site-packages",
    )
    return parser.parse_args(argv)


def refused(args: argparse.Namespace) -> str | None:
    """Say why a combination of flags cannot run, None when it can."""
    if args.paths and not args.audit_only:
        return f"PATH arguments ({' '.join(args.paths)}) go with --audit-only only"
    if args.audit_only and args.expect_torch:
        return "--expect-torch needs torch, which --audit-only does not import; drop one"
    return None


def run_audit_only(paths: Sequence[str], expect_cca: str | None, as_json: bool) -> int:
    """`smoke --audit-only`: print the arch audit (skipped, with the reason, when there is
    neither a GPU nor --expect-cca) and the link audit; return 0 (both pass), 1 (one fails) or
    2 (bad input: one line on stderr, and under --json an object with an error). Never
    imports torch."""
    try:
        expected = arch_audit.cca_targets(expect_cca) if expect_cca else []
        with arch_audit.unpacked_wheels(paths) as (local, shown):
            start = time.perf_counter()
            gpus, why = arch_audit.visible_gpus()
            targets = arch_audit.merge_targets(gpus, expected)
            rows = arch_audit.audit(local, targets) if targets else None
            arch_seconds = time.perf_counter() - start
            site = [str(path.resolve()) for path in arch_audit.site_packages()]
            links = link_audit.audit(local, [(folder, site) for folder in shown])
            text = audits_text(rows, targets, arch_seconds, why, links, paths, as_json)
            print(arch_audit.shown_paths(text, shown), flush=True)
    except (arch_audit.AuditInputError, link_audit.LinkInputError, arch_rules.CCAError) as exc:
        print(f"smoke --audit-only: {exc}", file=sys.stderr, flush=True)
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 2
    arch_failed = rows is not None and arch_audit.overall(rows) == FAIL
    return 1 if arch_failed or not links.ok else 0


def audits_text(
    rows: list[arch_audit.PackageRow] | None,
    targets: Sequence[arch_audit.Target],
    arch_seconds: float,
    why: str,
    links: link_audit.LinkAudit,
    paths: Sequence[str],
    as_json: bool,
) -> str:
    """Both audits as two tables, or as one JSON object {ok, arch, links}."""
    skipped = (
        f"arch audit skipped: {why} and no --expect-cca; pass --expect-cca with the GPUs' "
        "compute capability, e.g. --expect-cca 8.6"
    )
    if as_json:
        arch = (
            json.loads(arch_audit.audit_json(rows, targets, arch_seconds))
            if rows is not None
            else {"ok": True, "skipped": skipped}
        )
        data = {"ok": arch["ok"] and links.ok, "arch": arch, "links": link_audit.audit_data(links)}
        return json.dumps(data, indent=2)
    arch_text = (
        arch_audit.render_table(rows, targets, arch_seconds) if rows is not None else skipped
    )
    return arch_text + "\n\n" + link_audit.render_table(links, paths)


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the report, return 0 when every required check passed."""
    args = parse_args(argv)
    problem = refused(args)
    if problem:
        print(f"smoke: {problem}", file=sys.stderr, flush=True)
        return 2
    if args.audit_only:
        return run_audit_only(args.paths, args.expect_cca, args.json)
    report = run_all(args)
    print(report_json(report) if args.json else render_table(report), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

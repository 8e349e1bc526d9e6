"""Measure a PyTorch install on the GPU: `python -m torchkiln.bench [--json] [--steps N]`.

GEMM TFLOP/s per precision and training throughput (ResNet-50, a Transformer stack) per mode,
each against naive fp32. Runs inside the built images, so it imports only the standard library
and torch (torchvision when present); it shares the probes and report helpers with smoke.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from torchkiln.inimage.probe import (
    diagnose_environment,
    format_cudnn_version,
    read_driver_version,
)
from torchkiln.inimage.report import one_line

EXIT_NO_GPU = 2

DEFAULT_MODELS = "resnet50,transformer"

# GEMM timing: GEMM_WARMUP products, the median of GEMM_REPEATS products timed one by one, then
# the same again after GEMM_SUSTAIN_S of continuous load. Both figures are needed: on an H200
# (700 W cap) bf16 8192^3 ran at ~805 TFLOP/s for its first ~60 ms, then the SW power cap
# (clocks_event_reasons 0x4) pulled the SM clock from 1980 to ~1500 MHz and it settled near
# 670-690 (nvidia-smi log in docs/gpu-results.md). The first figure is the one vendor and
# library tables quote; the second is what a long training run gets.
GEMM_WARMUP = 3
GEMM_REPEATS = 20
GEMM_SUSTAIN_S = 1.0


@dataclass
class GemmRow:
    """One GEMM measurement."""

    mode: str
    tflops: float | None
    ms: float | None
    sustained: float | None = None
    note: str = ""


@dataclass
class TrainRow:
    """One training-throughput measurement."""

    model: str
    mode: str
    throughput: float | None
    unit: str
    speedup: float | None = None
    peak_gib: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Mode:
    """The switches that make one training mode."""

    name: str
    tf32: bool = False
    benchmark: bool = False
    autocast: bool = False
    channels_last: bool = False
    compile: bool = False


FP32 = Mode("fp32")
TF32 = Mode("tf32", tf32=True, benchmark=True)
BF16 = Mode("bf16 autocast", tf32=True, benchmark=True, autocast=True)
BF16_CL = Mode("+ channels_last", tf32=True, benchmark=True, autocast=True, channels_last=True)


# --- pure helpers ---------------------------------------------------------------------------


def progress(text: str) -> None:
    """Show progress on stderr, so stdout keeps only the tables or the JSON."""
    print(text, file=sys.stderr, flush=True)


def gemm_flops(n: int) -> int:
    """Count the floating-point operations of an n x n x n matrix product."""
    return 2 * n**3


def add_speedups(rows: list[TrainRow]) -> None:
    """Fill each row's speedup against the same model's fp32 row."""
    base = {r.model: r.throughput for r in rows if r.mode == FP32.name and r.throughput}
    for row in rows:
        if row.throughput and base.get(row.model):
            row.speedup = row.throughput / base[row.model]


def render_header(header: dict[str, Any]) -> str:
    """Describe the GPU and software in two lines."""
    return (
        f"GPU {header['gpu']} (cc {header['capability']}, {header['memory_gib']} GiB)  "
        f"driver {header['driver']}\n"
        f"torch {header['torch']}  CUDA {header['cuda']}  cuDNN {header['cudnn']}"
    )


def render_tables(gemm_size: int, gemm: list[GemmRow], train: list[TrainRow]) -> str:
    """Lay the results out as plain-text tables."""
    lines: list[str] = []
    if gemm:
        lines.append(f"GEMM {gemm_size}^3, random data, FLOPs = 2n^3")
        table = [("mode", "TFLOP/s", "ms", f"after {GEMM_SUSTAIN_S:.0f} s load", "note")]
        for g in gemm:
            table.append(
                (
                    g.mode,
                    f"{g.tflops:.1f}" if g.tflops else "-",
                    f"{g.ms:.3f}" if g.ms else "-",
                    f"{g.sustained:.1f} TFLOP/s" if g.sustained else "-",
                    g.note,
                )
            )
        lines += [*_table(table), ""]
    if train:
        lines.append("Training throughput, synthetic data (speedup vs naive fp32)")
        table = [("model", "mode", "throughput", "speedup", "peak GiB", "note")]
        for t in train:
            table.append(
                (
                    t.model,
                    t.mode,
                    f"{t.throughput:,.0f} {t.unit}" if t.throughput else "-",
                    f"{t.speedup:.2f}x" if t.speedup else "-",
                    f"{t.peak_gib:.1f}" if t.peak_gib else "-",
                    t.note,
                )
            )
        lines += _table(table)
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


# --- environment ------------------------------------------------------------------------------


def no_gpu_reason(torch: Any) -> str | None:
    """Return why CUDA cannot be used here (smoke's diagnosis), or None when it can."""
    if torch.version.cuda is not None and torch.cuda.is_available():
        return None
    return diagnose_environment(torch)


@contextlib.contextmanager
def backend_flags(torch: Any, tf32: bool, benchmark: bool) -> Iterator[None]:
    """Set TF32 and cudnn.benchmark for a block; give the caller's values back afterwards."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = saved


def free_memory(torch: Any) -> None:
    """Drop cached blocks and compiled graphs between measurements."""
    gc.collect()
    if "torch._dynamo" in sys.modules:  # importing dynamo just to reset it costs seconds
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(torch: Any) -> None:
    """Wait for the GPU before reading a host clock (no-op without CUDA, for CPU tests)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- GEMM -------------------------------------------------------------------------------------


def _median_ms(torch: Any, product: Callable[[], Any], repeats: int) -> float:
    """Time `repeats` back-to-back products with an event pair each; return the median in ms."""
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeats)
    ]
    # No sync and no allocation inside the loop: the launch queue stays full.
    for begin, end in events:
        begin.record()
        product()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(begin.elapsed_time(end) for begin, end in events)


def gemm(torch: Any, n: int, mode: str) -> GemmRow:
    """Time an n^3 matrix product in one precision with CUDA events, fresh and sustained."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode, torch.float32)
    label = {"fp32": "fp32 (TF32 off)", "tf32": "tf32"}.get(mode, mode)
    try:
        with backend_flags(torch, tf32=mode == "tf32", benchmark=False):
            gen = torch.Generator(device="cuda").manual_seed(0)
            # Random data: zeros run faster than real data and would flatter the figure.
            a = torch.randn(n, n, device="cuda", dtype=dtype, generator=gen)
            b = torch.randn(n, n, device="cuda", dtype=dtype, generator=gen)
            out = torch.empty(n, n, device="cuda", dtype=dtype)

            def product() -> None:
                torch.matmul(a, b, out=out)

            # The first call creates the cuBLAS handle and picks the kernel; a few more lift
            # the clocks from idle (they reach full speed within milliseconds). Kept short so
            # the timed products finish before the power cap reacts.
            product()
            torch.cuda.synchronize()
            for _ in range(GEMM_WARMUP):
                product()
            torch.cuda.synchronize()
            ms = _median_ms(torch, product, GEMM_REPEATS)
            # Then keep the GPU busy: under its power limit the clocks settle lower.
            start = time.perf_counter()
            while time.perf_counter() - start < GEMM_SUSTAIN_S:
                for _ in range(8):
                    product()
                torch.cuda.synchronize()
            sustained_ms = _median_ms(torch, product, GEMM_REPEATS)
            if not bool(torch.isfinite(out[:64, :64]).all()):
                return GemmRow(label, None, ms, note="non-finite result")
        flops = gemm_flops(n)
        return GemmRow(
            label,
            flops / (ms * 1e-3) / 1e12,
            ms,
            sustained=flops / (sustained_ms * 1e-3) / 1e12,
            note=f"median of {GEMM_REPEATS} after {GEMM_WARMUP} warm-up",
        )
    except Exception as exc:  # a failed measurement is a row, not a traceback
        return GemmRow(label, None, None, note=one_line(f"{type(exc).__name__}: {exc}"))
    finally:
        free_memory(torch)


# --- training ---------------------------------------------------------------------------------


def make_transformer(torch: Any, vocab: int, d_model: int, heads: int, layers: int) -> Any:
    """Build a small pre-norm decoder-only Transformer whose attention is SDPA (causal)."""
    nn = torch.nn
    functional = torch.nn.functional

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.norm2 = nn.LayerNorm(d_model)
            self.fc1 = nn.Linear(d_model, 4 * d_model)
            self.fc2 = nn.Linear(4 * d_model, d_model)

        def forward(self, x: Any) -> Any:
            batch, seq, _ = x.shape
            qkv = self.qkv(self.norm1(x)).view(batch, seq, 3, heads, d_model // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attn = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(attn.transpose(1, 2).reshape(batch, seq, d_model))
            return x + self.fc2(functional.gelu(self.fc1(self.norm2(x))))

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            self.blocks = nn.Sequential(*(Block() for _ in range(layers)))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab)

        def forward(self, tokens: Any) -> Any:
            return self.head(self.norm(self.blocks(self.embed(tokens))))

    return TinyLM()


@dataclass(frozen=True)
class Workload:
    """A model to train on synthetic data, with how to count its throughput."""

    name: str
    unit: str
    per_step: int
    build: Callable[[Any, Mode], tuple[Any, Any, Any, Callable[[Any], Any]]]
    modes: tuple[Mode, ...]


def resnet50_workload(torch: Any, batch: int) -> Workload:
    """ResNet-50 on 224x224 images with SGD; needs torchvision."""
    import torchvision

    def build(device: Any, mode: Mode) -> tuple[Any, Any, Any, Callable[[Any], Any]]:
        model = torchvision.models.resnet50(weights=None).to(device)
        x = torch.randn(batch, 3, 224, 224, device=device)
        if mode.channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,), device=device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, opt, (x, y), lambda out: torch.nn.functional.cross_entropy(out, y)

    # channels_last only helps convolutions, so it is a ResNet mode alone.
    return Workload("resnet50", "img/s", batch, build, (FP32, TF32, BF16, BF16_CL))


def transformer_workload(
    torch: Any,
    batch: int,
    seq: int,
    d_model: int = 1024,
    heads: int = 16,
    layers: int = 4,
    vocab: int = 8192,
) -> Workload:
    """A causal pre-norm Transformer LM (default 4 layers, d_model 1024, 16 heads), AdamW."""

    def build(device: Any, mode: Mode) -> tuple[Any, Any, Any, Callable[[Any], Any]]:
        model = make_transformer(torch, vocab, d_model, heads, layers).to(device)
        tokens = torch.randint(0, vocab, (batch, seq), device=device)
        targets = torch.randint(0, vocab, (batch, seq), device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def loss(out: Any) -> Any:
            return torch.nn.functional.cross_entropy(out.reshape(-1, vocab), targets.reshape(-1))

        return model, opt, (tokens, None), loss

    return Workload("transformer", "tok/s", batch * seq, build, (FP32, TF32, BF16))


def train(
    torch: Any, work: Workload, mode: Mode, steps: int, warmup: int, device: str = "cuda"
) -> TrainRow:
    """Train for warm-up + timed steps in one mode and return the throughput."""
    row = TrainRow(work.name, mode.name, None, work.unit)
    free_memory(torch)
    try:
        torch.manual_seed(0)
        with backend_flags(torch, tf32=mode.tf32, benchmark=mode.benchmark):
            model, opt, (inputs, _), loss_fn = work.build(torch.device(device), mode)
            forward = torch.compile(model) if mode.compile else model

            def step() -> Any:
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=mode.autocast):
                    loss = loss_fn(forward(inputs))
                loss.backward()
                opt.step()
                return loss

            start = time.perf_counter()
            for _ in range(warmup):
                step()
            sync(torch)
            warm_s = time.perf_counter() - start
            # Time whole steps between two synchronisations: what a training loop sees.
            start = time.perf_counter()
            for _ in range(steps):
                loss = step()
            sync(torch)
            elapsed = time.perf_counter() - start
            value = float(loss.detach().float().item())
            if device == "cuda":
                row.peak_gib = torch.cuda.max_memory_reserved() / 2**30
            if not math.isfinite(value):
                row.note = f"loss is {value}"
                return row
            row.throughput = steps * work.per_step / elapsed
            if mode.compile:
                row.note = f"warm-up incl. compile {warm_s:.0f} s"
    except Exception as exc:  # OOM, compile errors...: reported in the row
        what = "compile failed" if mode.compile else type(exc).__name__
        row.note = one_line(f"{what}: {exc}")
    finally:
        free_memory(torch)
    shown = f"{row.throughput:,.0f} {row.unit}" if row.throughput else row.note
    progress(f"{row.model} {row.mode}: {shown}")
    return row


def bench_model(torch: Any, work: Workload, steps: int, warmup: int) -> list[TrainRow]:
    """Run every mode of one workload, then torch.compile on top of the fastest."""
    rows = [train(torch, work, mode, steps, warmup) for mode in work.modes]
    measured = [(r.throughput, m) for r, m in zip(rows, work.modes, strict=True) if r.throughput]
    if measured:
        best = max(measured, key=lambda item: item[0])[1]
        compiled = Mode(
            f"+ torch.compile (on {best.name})",
            tf32=best.tf32,
            benchmark=best.benchmark,
            autocast=best.autocast,
            channels_last=best.channels_last,
            compile=True,
        )
        rows.append(train(torch, work, compiled, steps, warmup))
    return rows


# --- main -------------------------------------------------------------------------------------


def header_info(torch: Any, gemm_size: int) -> dict[str, Any]:
    """Describe the GPU and software the figures belong to."""
    props = torch.cuda.get_device_properties(0)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "driver": read_driver_version() or "-",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": format_cudnn_version(cudnn),
        "gemm_size": gemm_size,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m torchkiln.bench",
        description="Measure GEMM TFLOP/s and training throughput on GPU 0.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help="comma-separated: resnet50, transformer; empty for none",
    )
    parser.add_argument(
        "--gemm-size", type=int, default=8192, help="n of the n^3 GEMM; 0 skips GEMM"
    )
    parser.add_argument("--batch", type=int, default=128, help="ResNet-50 batch")
    parser.add_argument("--seq", type=int, default=1024, help="Transformer sequence length")
    parser.add_argument("--tbatch", type=int, default=16, help="Transformer batch")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 2 without a GPU, 1 if a non-compile measurement failed."""
    args = parse_args(argv)
    try:
        import torch
    except Exception as exc:  # missing or broken torch is a diagnosis, not a traceback
        print(
            f"bench needs a CUDA GPU: torch does not import: {one_line(str(exc))}", file=sys.stderr
        )
        return EXIT_NO_GPU
    reason = no_gpu_reason(torch)
    if reason:
        print(f"bench needs a CUDA GPU: {reason}", file=sys.stderr)
        return EXIT_NO_GPU
    started = time.perf_counter()
    header = header_info(torch, args.gemm_size)
    if not args.json:
        print(render_header(header) + "\n", flush=True)
    gemm_rows: list[GemmRow] = []
    if args.gemm_size > 0:
        for mode in ("fp32", "tf32", "bf16", "fp16"):
            gemm_rows.append(gemm(torch, args.gemm_size, mode))
            row = gemm_rows[-1]
            progress(
                f"gemm {row.mode}: {row.tflops or 0:.1f} TFLOP/s, after load "
                f"{row.sustained or 0:.1f}"
            )
    train_rows: list[TrainRow] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "resnet50":
            try:
                work = resnet50_workload(torch, args.batch)
            except ImportError as exc:
                train_rows.append(TrainRow("resnet50", "-", None, "img/s", note=f"skipped: {exc}"))
                continue
        elif name == "transformer":
            work = transformer_workload(torch, args.tbatch, args.seq)
        else:
            train_rows.append(TrainRow(name, "-", None, "", note="unknown model"))
            continue
        train_rows.extend(bench_model(torch, work, args.steps, args.warmup))
    add_speedups(train_rows)
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "header": header,
                    "gemm": [asdict(g) for g in gemm_rows],
                    "train": [asdict(t) for t in train_rows],
                    "seconds": round(seconds, 1),
                },
                indent=2,
            )
        )
    else:
        print(render_tables(args.gemm_size, gemm_rows, train_rows))
        print(f"\nbench took {seconds:.0f} s")
    failed = [g for g in gemm_rows if g.tflops is None] + [
        t for t in train_rows if t.throughput is None and "compile" not in t.mode and t.mode != "-"
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Unit tests for torchkiln.bench that need no GPU."""

from __future__ import annotations

import pytest

from torchkiln.inimage import bench


def test_gemm_flops() -> None:
    assert bench.gemm_flops(8192) == 2 * 8192**3


def test_speedups_are_against_each_models_fp32() -> None:
    rows = [
        bench.TrainRow("resnet50", "fp32", 100.0, "img/s"),
        bench.TrainRow("resnet50", "+ channels_last", 495.0, "img/s"),
        bench.TrainRow("transformer", "fp32", 1000.0, "tok/s"),
        bench.TrainRow("transformer", "bf16 autocast", 3000.0, "tok/s"),
        bench.TrainRow("transformer", "+ torch.compile", None, "tok/s", note="compile failed"),
    ]
    bench.add_speedups(rows)
    assert [r.speedup for r in rows] == [1.0, 4.95, 1.0, 3.0, None]
    text = bench.render_tables(8192, [bench.GemmRow("bf16", 790.0, 1.39)], rows)
    assert "4.95x" in text
    assert "compile failed" in text
    assert "790.0" in text


def test_modes_build_on_each_other() -> None:
    assert not bench.FP32.tf32
    assert not bench.FP32.benchmark
    assert bench.TF32.tf32
    assert bench.TF32.benchmark
    assert bench.BF16.autocast
    assert bench.BF16.tf32
    assert bench.BF16_CL.channels_last
    assert bench.BF16_CL.autocast


def test_transformer_trains_on_cpu() -> None:
    torch = pytest.importorskip("torch")
    work = bench.transformer_workload(torch, 2, 32, d_model=32, heads=4, layers=1, vocab=64)
    row = bench.train(torch, work, bench.FP32, steps=2, warmup=1, device="cpu")
    assert row.note == ""
    assert row.throughput is not None
    assert row.throughput > 0
    # TF32 and cudnn.benchmark come back as they were.
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_failed_mode_is_a_row_not_a_traceback() -> None:
    torch = pytest.importorskip("torch")
    work = bench.transformer_workload(torch, 2, 32, d_model=30, heads=4, layers=1, vocab=64)
    row = bench.train(torch, work, bench.FP32, steps=1, warmup=1, device="cpu")
    assert row.throughput is None
    assert row.note.startswith("RuntimeError")

"""Run extensions' ops on CUDA against torch's own; print one line each, and what the GPU said
when it could not run them (used by gpu_extensions.sh). `python3 gpu_extension_ops.py NAME…` runs
the checks of those distributions (torch_scatter, torchsort, the torchvision stand-in `vision`);
a name without checks says so."""

import sys

import torch

device = torch.device("cuda")
generator = torch.Generator().manual_seed(0)


def report(name, run):
    try:
        print(f"{name}: {run()}")
    except Exception as error:  # the GPU's own words are the result here
        print(f"{name}: FAILED {type(error).__name__}: {' '.join(str(error).split())[:200]}")


def soft_rank():
    import torchsort

    values = torch.randn(64, 1000, generator=generator, dtype=torch.float64)
    expected = torchsort.soft_rank(values, regularization_strength=0.1)
    got = torchsort.soft_rank(values.to(device), regularization_strength=0.1)
    torch.cuda.synchronize()
    error = (got.cpu() - expected).abs().max().item()
    name = torch.cuda.get_device_name()
    return f"torchsort.soft_rank on {name} matches the CPU (max abs err {error:.1e})"


def vision():
    import torchvision._C as kernels

    data = torch.randn(1 << 20, generator=generator)
    got = kernels.add_one(kernels.scale(data.to(device), 3.0)).cpu()
    torch.cuda.synchronize()
    assert torch.allclose(got, data * 3.0 + 1.0)
    return "scale and add_one kernels match the CPU"


def scatter():
    """scatter_max against torch's scatter_reduce("amax"), segment_csr against per-segment sums."""
    import torch_scatter

    src = torch.randn(100_000, 16, generator=generator)
    index = torch.randint(0, 1000, (100_000,), generator=generator)
    got, argmax = torch_scatter.scatter_max(src.to(device), index.to(device), dim=0, dim_size=1000)
    expected = torch.full((1000, 16), float("-inf")).scatter_reduce(
        0, index[:, None].expand_as(src), src, "amax", include_self=True
    )
    expected[expected == float("-inf")] = 0  # torch_scatter fills empty rows with 0
    assert torch.equal(got.cpu(), expected), "scatter_max differs from scatter_reduce(amax)"
    picked = src.to(device).gather(0, argmax.clamp(max=src.size(0) - 1))
    assert torch.equal(picked[argmax < src.size(0)], got[argmax < src.size(0)])
    counts = torch.bincount(index, minlength=1000)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    ordered = src[torch.sort(index, stable=True).indices]
    summed = torch_scatter.segment_csr(ordered.to(device), indptr.to(device), reduce="sum").cpu()
    sums = torch.zeros(1000, 16).index_add_(0, index, src)
    error = (summed - sums).abs().max().item()
    assert error < 1e-4, f"segment_csr sums differ by {error}"
    name = torch.cuda.get_device_name()
    return (
        f"scatter_max equals torch's scatter_reduce(amax) and segment_csr its per-segment sums "
        f"(max abs err {error:.1e}) on {name}"
    )


CHECKS = {
    "torch_scatter": ("torch-scatter", scatter),
    "torchsort": ("torchsort", soft_rank),
    "vision": ("torchvision stand-in", vision),
}
for wanted in sys.argv[1:] or ["torchsort", "vision"]:
    key = wanted.replace("-", "_").lower()
    if key in CHECKS:
        report(*CHECKS[key])
    else:
        print(f"{wanted}: no checks of its ops here (its own tests, if its sdist has them, run)")

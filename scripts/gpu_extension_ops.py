"""Run the extension's op and the torchvision stand-in's kernels on CUDA against the CPU; print
one line each, and what the GPU said when it could not run them (used by gpu_extensions.sh)."""

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


report("torchsort", soft_rank)
report("torchvision stand-in", vision)

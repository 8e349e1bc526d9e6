"""Drop the page cache of everything a smoke run reads, without root, so each timed run starts
as on a machine just booted: every file under this Python's import paths (torch, its NVIDIA
libraries, Triton, the standard library) and every shared library a process that imported torch
and started CUDA had mapped (the driver's included). Linux keeps a clean page out of memory once
POSIX_FADV_DONTNEED is given for it; a page mapped by a running process stays.

Usage: python3 scripts/evict_page_cache.py   (prints how many files and bytes it was given)"""

from __future__ import annotations

import os
import subprocess
import sys

MAPPED = r"""
import torch
if torch.cuda.is_available():
    torch.zeros(1, device="cuda")
print("\n".join(sorted({line.split()[-1] for line in open("/proc/self/maps")
                         if line.rstrip().endswith(".so") or ".so." in line})))
"""


def mapped_libraries() -> list[str]:
    """The shared objects a torch process with a CUDA context maps."""
    out = subprocess.run(
        [sys.executable, "-c", MAPPED], capture_output=True, text=True, timeout=300, check=False
    ).stdout
    return [line for line in out.splitlines() if line.startswith("/")]


def files_under(folders: list[str]) -> list[str]:
    """Every regular file below the folders."""
    found = []
    for folder in folders:
        for root, _, names in os.walk(folder):
            found.extend(os.path.join(root, name) for name in names)
    return found


def evict(path: str) -> int:
    """Advise the kernel to drop the file's cached pages; its size, 0 when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.fstat(fd).st_size
    except OSError:
        return 0
    finally:
        os.close(fd)


def main() -> int:
    folders = [path for path in sys.path if path and os.path.isdir(path)]
    paths = sorted(set(files_under(folders)) | set(mapped_libraries()))
    total = sum(evict(path) for path in paths)
    print(f"page cache dropped for {len(paths)} files, {total / 1e9:.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

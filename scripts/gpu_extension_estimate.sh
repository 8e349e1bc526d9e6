#!/bin/bash
# On a GPU host with torch, nvcc, cmake and ninja but no Docker and no network: build one CUDA
# extension from its sdist for one CCA with EXTENSION_ARCHS=cca through
# docker/scripts/build-wheel.sh (the script the image's extension stage runs, with the same nvcc
# wrapper), and print its build time beside what invoke build's estimate says for it
# (torchkiln.extcompile, its CUDA sources counted from the sdist as before a build).
#
# Usage: scripts/gpu_extension_estimate.sh SDIST OUT [CCA]   (from the checkout's root)
#   e.g. scripts/gpu_extension_estimate.sh carry/mamba_ssm-2.3.2.post1.tar.gz out/mamba 9.0
# What the build imports besides torch (setuptools, wheel, packaging, ninja …) comes from
# PIP_FIND_LINKS=DIR of carried wheels, as for scripts/gpu_extensions.sh.
set -euo pipefail
sdist=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
mkdir -p "$2"
out=$(cd "$2" && pwd) cca=${3:-9.0}
repo=$(pwd)
[[ -s $sdist ]] || { echo "ERROR: $sdist is missing; carry the sdist in" >&2; exit 1; }
export PYTHONPATH=$repo/src
# shellcheck source=scripts/gpu_host.sh
source "$repo/scripts/gpu_host.sh"
export CCACHE_DISABLE=1 FORCE_CUDA=1
# Their setup.py would otherwise look for a prebuilt wheel on the network.
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE FLASH_ATTENTION_FORCE_BUILD=TRUE
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
cca_exports "$cca"
echo "cores $(nproc), $("$CUDA_HOME/bin/nvcc" --version | tail -1)" | tee "$out/host.txt"
rm -rf "$out/src" "$out/wheels" && mkdir -p "$out/src" "$out/wheels"
tar -xzf "$sdist" -C "$out/src"
tree=$(find "$out/src" -mindepth 1 -maxdepth 1 -type d)
name=$(python3 -m torchkiln.inimage.extreport name "$tree" --default extension)
started=$(date +%s)
EXTENSION_ARCHS=cca TORCHKILN_NVCC_LOG=$out/nvcc-calls.jsonl TORCHKILN_BUILD_NAME=$name \
  "$repo/docker/scripts/build-wheel.sh" "$tree" "$out/wheels" >"$out/build.log" 2>&1 ||
  { tail -40 "$out/build.log"; echo "ERROR: the build of $name failed" >&2; exit 1; }
seconds=$(($(date +%s) - started))
jobs=$(grep -oE 'MAX_JOBS=[0-9]+' "$out/build.log" | head -1 | cut -d= -f2)
python3 - "$sdist" "$name" "$cca" "$seconds" "${jobs:-$(nproc)}" <<'PY' | tee "$out/summary.txt"
import sys
from pathlib import Path

from torchkiln import extcompile, extsources

sdist, name, cca, seconds, jobs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
read = extsources.of_archive(name, sdist, Path(sdist).read_bytes())
archs = extcompile.archs_compiled({"CCA": cca, "EXTENSION_ARCHS": "cca", "CUDA_FROM": "image"})
said = extcompile.extension_seconds(read.cuda_sources or 0, archs, jobs)
print(
    f"{name} for {cca}, EXTENSION_ARCHS=cca, MAX_JOBS={jobs}: built in {seconds:.0f} s; the "
    f"estimate: {said:.0f} s ({read.cuda_sources} CUDA sources x {archs} arch); measured / "
    f"estimate {seconds / said:.2f} (goal 0.70-1.30)"
)
PY

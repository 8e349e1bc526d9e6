#!/bin/bash
# Build the wheel of the source tree $1 into $2 with pip (no build isolation: the build uses what
# is installed, plus the wheels in $3 such as torch for torchvision), for the GPUs in CCA; print
# ccache's statistics afterwards.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
source_dir=$1 wheel_dir=$2 preinstall=${3:-}
mkdir -p "$wheel_dir"
if [[ ! -e $source_dir/setup.py && ! -e $source_dir/pyproject.toml ]]; then
  echo "torchkiln: $source_dir is empty; nothing to build"
  exit 0
fi
# TORCH_CUDA_ARCH_LIST comes ready-made from invoke build (its one CCA parser), never from here.
if [[ -z ${TORCH_CUDA_ARCH_LIST:-} ]]; then
  echo "ERROR: TORCH_CUDA_ARCH_LIST is empty; build with invoke build --cca 8.6 (it derives it" \
    "from CCA), or pass --build-arg TORCH_CUDA_ARCH_LIST" >&2
  exit 1
fi
MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST MAX_JOBS USE_CUDNN USE_NCCL USE_FLASH_ATTENTION USE_MEM_EFF_ATTENTION DEBUG
export CCACHE_DIR=/root/.cache/ccache
echo "torchkiln: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
# BUILD_MAGMA=1 mounts magma's prefix at /opt/magma (empty otherwise): PyTorch's FindMAGMA
# looks in MAGMA_HOME, other find_package calls in CMAKE_PREFIX_PATH.
if compgen -G '/opt/magma/lib/libmagma.*' >/dev/null; then
  export MAGMA_HOME=/opt/magma USE_MAGMA=1
  export CMAKE_PREFIX_PATH=${CMAKE_PREFIX_PATH:+$CMAKE_PREFIX_PATH:}/opt/magma
  echo "torchkiln: USE_MAGMA=1 MAGMA_HOME=$MAGMA_HOME"
fi
if [[ -n $preinstall ]]; then
  pip install "$preinstall"/*.whl
fi
if [[ -f $source_dir/requirements.txt ]]; then
  pip install -r "$source_dir/requirements.txt"
fi
ccache --zero-stats >/dev/null
# `command pip`: no index is needed here, so the compile never sees the index token.
command pip wheel --no-build-isolation --no-deps --wheel-dir "$wheel_dir" "$source_dir"
ccache --show-stats
# One machine-readable line for invoke build's summary.
ccache --print-stats | awk -F'\t' '
  /^(direct|preprocessed)_cache_hit\t/ {hits += $2}
  /^cache_miss\t/ {misses += $2}
  END {printf "torchkiln-ccache: hits=%d misses=%d\n", hits, misses}'

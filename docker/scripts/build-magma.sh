#!/bin/bash
# BUILD_MAGMA=1: build magma from the source tree $1 for the GPUs in CCA and install it into the
# prefix $2 as static libraries, which PyTorch links into libtorch_cuda (the runtime image needs
# none of it). A git checkout gets its precision files generated first; releases ship them.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
source_dir=$1 prefix=$2
# The arch lists come ready-made from invoke build (its one CCA parser): GPU_TARGET in magma's
# names ('sm_86 sm_90a'), CMAKE_CUDA_ARCHITECTURES with -real where no PTX is wanted.
if [[ -z ${MAGMA_GPU_TARGET:-} || -z ${CUDA_ARCHITECTURES:-} ]]; then
  echo "ERROR: MAGMA_GPU_TARGET/CUDA_ARCHITECTURES are empty; build with invoke build --cca 8.6" >&2
  exit 1
fi
# magma's CPU side needs BLAS/LAPACK.
apt_install libopenblas-dev
# The oldest arch, for MAGMA_CUDA_ARCH_MIN: the smallest number in CUDA_ARCHITECTURES.
min_arch=$(grep -o '[0-9]\+' <<<"$CUDA_ARCHITECTURES" | sort -n | head -1)
MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "torchkiln: magma GPU_TARGET='$MAGMA_GPU_TARGET' CMAKE_CUDA_ARCHITECTURES='$CUDA_ARCHITECTURES'"

if [[ ! -f $source_dir/CMake.src.cuda && -f $source_dir/Makefile ]]; then
  # magma's README: a repository checkout generates the other precisions with `make generate`.
  printf 'FORT = true\nBACKEND = cuda\nGPU_TARGET = Volta\n' >"$source_dir/make.inc"
  make -C "$source_dir" -j "$MAX_JOBS" generate
fi
build_dir=$(mktemp -d)
cmake -S "$source_dir" -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$prefix" \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
  -DBUILD_SHARED_LIBS=OFF \
  -DMAGMA_ENABLE_CUDA=ON \
  -DUSE_FORTRAN=OFF \
  -DGPU_TARGET="$MAGMA_GPU_TARGET" \
  -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHITECTURES" \
  -DMAGMA_CUDA_ARCH_MIN="${min_arch}0" \
  -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache
# The libraries only: magma's testers would double the build time.
cmake --build "$build_dir" --parallel "$MAX_JOBS" --target magma magma_sparse
cmake --install "$build_dir"
rm -rf "$build_dir"
ls -l "$prefix/lib"

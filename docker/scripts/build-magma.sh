#!/bin/bash
# BUILD_MAGMA=1: build magma from the source tree $1 for the GPUs in CCA and install it into the
# prefix $2 as static libraries, which PyTorch links into libtorch_cuda (the runtime image needs
# none of it). A git checkout gets its precision files generated first; releases ship them.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
source_dir=$1 prefix=$2
if [[ -z ${CCA:-} ]]; then
  echo "ERROR: CCA is empty; run invoke env on the GPU host or pass --cca 8.6" >&2
  exit 1
fi
# magma's CPU side needs BLAS/LAPACK.
apt_install libopenblas-dev

# CCA '8.6 9.0a 12.0+PTX' -> GPU_TARGET 'sm_86 sm_90a sm_120' (magma's own names) and
# CMAKE_CUDA_ARCHITECTURES '86-real;90a-real;120' (SASS for each, PTX only where +PTX asks).
read -ra items <<<"${CCA//[;,]/ }"
gpu_target=() cuda_architectures=() min_arch=
for item in "${items[@]}"; do
  arch=${item%+[Pp][Tt][Xx]}
  number=${arch/./}
  gpu_target+=("sm_$number")
  if [[ $arch == "$item" ]]; then
    cuda_architectures+=("$number-real")
  else
    cuda_architectures+=("$number")
  fi
  digits=${number%a}
  if [[ -z $min_arch ]] || ((digits < min_arch)); then
    min_arch=$digits
  fi
done
architectures=$(IFS=';' && echo "${cuda_architectures[*]}")
MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "torchkiln: magma GPU_TARGET='${gpu_target[*]}' CMAKE_CUDA_ARCHITECTURES='$architectures'"

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
  -DGPU_TARGET="${gpu_target[*]}" \
  -DCMAKE_CUDA_ARCHITECTURES="$architectures" \
  -DMAGMA_CUDA_ARCH_MIN="${min_arch}0" \
  -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache
# The libraries only: magma's testers would double the build time.
cmake --build "$build_dir" --parallel "$MAX_JOBS" --target magma magma_sparse
cmake --install "$build_dir"
rm -rf "$build_dir"
ls -l "$prefix/lib"

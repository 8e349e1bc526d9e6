#!/bin/bash
# BUILD_MAGMA=1: build magma from the source tree $1 for the GPUs in CCA and install it into the
# prefix $2 as static libraries, which PyTorch links into libtorch_cuda (the runtime image needs
# none of it). A git checkout gets its precision files generated first; releases ship them.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
source_dir=$1 prefix=$2
# The archs come ready-made from invoke build (its one CCA parser): CMAKE_CUDA_ARCHITECTURES
# ('86-real;90a-real;120': SASS for each, PTX only where +PTX asks) and MAGMA_CUDA_ARCH_MIN (the
# oldest, '860'). Given both, magma takes CMake's list; its GPU_TARGET names would override it
# and lose the -real/PTX choice, so GPU_TARGET is not passed.
if [[ -z ${CUDA_ARCHITECTURES:-} || -z ${MAGMA_CUDA_ARCH_MIN:-} ]]; then
  echo "ERROR: CUDA_ARCHITECTURES/MAGMA_CUDA_ARCH_MIN are empty; build with invoke build --cca 8.6" >&2
  exit 1
fi
# magma's CPU side needs BLAS/LAPACK (build-base has OpenBLAS, which carries LAPACK).
MAX_JOBS=${MAX_JOBS:-$(nproc)}
use_sccache
echo "torchkiln: magma CMAKE_CUDA_ARCHITECTURES='$CUDA_ARCHITECTURES' MAGMA_CUDA_ARCH_MIN=$MAGMA_CUDA_ARCH_MIN"

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
  -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHITECTURES" \
  -DMAGMA_CUDA_ARCH_MIN="$MAGMA_CUDA_ARCH_MIN" \
  -DCMAKE_C_COMPILER_LAUNCHER=sccache \
  -DCMAKE_CXX_COMPILER_LAUNCHER=sccache \
  -DCMAKE_CUDA_COMPILER_LAUNCHER=sccache
# The library PyTorch links, only: magma_sparse (never used by PyTorch) and the testers would
# double the build time.
cmake --build "$build_dir" --parallel "$MAX_JOBS" --target magma
# magma's install rule names magma_sparse too: install what PyTorch's FindMAGMA reads by hand.
mkdir -p "$prefix/lib" "$prefix/include"
find "$build_dir" -name libmagma.a -exec cp {} "$prefix/lib/" \;
cp "$source_dir"/include/*.h "$prefix/include/"
if compgen -G "$build_dir/include/*.h" >/dev/null; then cp "$build_dir"/include/*.h "$prefix/include/"; fi
rm -rf "$build_dir"
compile_cache_stats magma
ls -l "$prefix/lib"

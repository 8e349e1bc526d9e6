#!/bin/bash
# CUDA_FROM=pypi: CUDA from NVIDIA's wheels on the Python index (or the wheelhouse).
#   install-cuda-pypi.sh toolkit VERSION   compiler, headers and libraries, cuDNN and NCCL, laid out
#                                          as /usr/local/cuda for CMake and torch.utils.cpp_extension
#   install-cuda-pypi.sh runtime VERSION   the libraries a torch compiled here needs at run time
#                                          (only for CUDA_FROM=pypi with BUILD_MODE=source: an
#                                          official torch wheel brings its own)
#   install-cuda-pypi.sh ldconfig          teach the dynamic linker where those libraries are
#                                          (does nothing unless CUDA_FROM is pypi)
# VERSION is the cuda-toolkit release (CUDA_VERSION, e.g. 13.0.2); CUDA 13's wheels put the
# toolkit under site-packages/nvidia/cu13, cuDNN and NCCL under nvidia/cudnn and nvidia/nccl.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
what=$1 version=${2:-}
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
major=${version%%.*}
libraries=cudart,cublas,cufft,curand,cusolver,cusparse,nvrtc,nvjitlink,nvtx,cupti

# nvcc's extra leaves crt and nvvm unpinned: pip would take the newest (13.5 for a 13.0 nvcc),
# whose PTX 13.0's ptxas rejects ("Unsupported .version 9.5"). Pin them to nvcc's own version,
# read from the cuda-toolkit wheel's metadata.
compiler_constraints() {
  local scratch metadata nvcc
  scratch=$(mktemp -d)
  pip download --quiet --no-deps "${wheelhouse_options[@]}" --dest "$scratch" \
    "cuda-toolkit==$version"
  metadata=$(python - "$scratch"/cuda_toolkit-*.whl <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    print(wheel.read(name).decode())
PY
  )
  rm -rf "$scratch"
  nvcc=$(grep -oP '^Requires-Dist: nvidia-cuda-nvcc\s*==\s*\K[0-9.]+[0-9]' <<<"$metadata" | head -1)
  if [[ -z $nvcc ]]; then
    echo "ERROR: cuda-toolkit $version names no nvcc version; set CUDA_VERSION to a release" \
      "of NVIDIA's cuda-toolkit wheel (pip index versions cuda-toolkit)" >&2
    exit 1
  fi
  printf 'nvidia-cuda-nvcc==%s\nnvidia-cuda-crt==%s\nnvidia-nvvm==%s\n' "$nvcc" "$nvcc" "$nvcc"
}

link_toolkit() {
  local nvidia=$site/nvidia cu=$site/nvidia/cu$major directory file name
  # nvcc finds its own tree from its real path and passes -L$tree/lib64.
  ln -sfn lib "$cu/lib64"
  # Unversioned names for the linker (-lcudart finds libcudart.so), cuDNN and NCCL included.
  for directory in "$cu/lib" "$nvidia/cudnn/lib" "$nvidia/nccl/lib"; do
    for file in "$directory"/lib*.so.*; do
      name=$(basename "$file")
      [[ -e $directory/${name%%.so.*}.so ]] || ln -s "$name" "$directory/${name%%.so.*}.so"
    done
  done
  # libnvvm where the classic layout keeps it.
  mkdir -p "$cu/nvvm/lib64"
  for file in "$cu"/lib/libnvvm.so*; do
    ln -sfn "../../lib/$(basename "$file")" "$cu/nvvm/lib64/"
  done
  # cuDNN and NCCL inside the CUDA tree, where PyTorch's FindCUDNN/FindNCCL also look.
  for file in "$nvidia"/cudnn/include/* "$nvidia"/nccl/include/*; do ln -sfn "$file" "$cu/include/"; done
  for file in "$nvidia"/cudnn/lib/* "$nvidia"/nccl/lib/*; do ln -sfn "$file" "$cu/lib/"; done
  ln -sfn "$cu" /usr/local/cuda
  ldconfig_venv
  /usr/local/cuda/bin/nvcc --version | tail -2
}

ldconfig_venv() {
  local conf=/etc/ld.so.conf.d/torchkiln-cuda-wheels.conf
  find "$site/nvidia" -mindepth 2 -maxdepth 2 -type d -name lib | sort >"$conf"
  cat "$conf"
  ldconfig
}

if [[ $what == runtime && (${CUDA_FROM:-} != pypi || ${BUILD_MODE:-} != source) ]]; then
  echo "torchkiln: CUDA_FROM=${CUDA_FROM:-} BUILD_MODE=${BUILD_MODE:-}: no CUDA wheels to add"
  exit 0
fi
case $what in
  toolkit | runtime)
    if ((major < 13)); then
      echo "ERROR: CUDA_FROM=pypi needs CUDA 13 or newer (CUDA_VERSION is $version); NVIDIA's" \
        "CUDA 12 wheels have another layout: use CUDA_FROM=image for CUDA 12" >&2
      exit 1
    fi
    extras=$libraries
    constraints=/tmp/cuda-compiler-constraints.txt
    : >"$constraints"
    if [[ $what == toolkit ]]; then
      extras=nvcc,cccl,$libraries
      compiler_constraints >"$constraints"
      cat "$constraints"
    fi
    pip install "${wheelhouse_options[@]}" --constraint "$constraints" \
      "cuda-toolkit[$extras]==$version" "nvidia-cudnn-cu$major" "nvidia-nccl-cu$major"
    rm "$constraints"
    # The runtime's libraries reach the dynamic linker in a later step run as root (ldconfig).
    [[ $what != toolkit ]] || link_toolkit
    ;;
  ldconfig)
    [[ ${CUDA_FROM:-} != pypi ]] || ldconfig_venv
    ;;
  *)
    echo "usage: install-cuda-pypi.sh toolkit VERSION | runtime VERSION | ldconfig" >&2
    exit 2
    ;;
esac

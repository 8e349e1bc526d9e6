#!/bin/bash
# CUDA from NVIDIA's wheels on the Python index (or the wheelhouse).
#   install-cuda-pypi.sh toolkit VERSION DIR  CUDA_FROM=pypi: compiler, headers and libraries of
#                                             cuda-toolkit VERSION laid out as /usr/local/cuda for
#                                             CMake, PyTorch's CMake and torch.utils.cpp_extension,
#                                             with the NVIDIA wheels of `parity` inside it and a
#                                             driver stub for the link step
#   install-cuda-pypi.sh parity DIR           CUDA_FROM=image: the NVIDIA wheels the official torch
#                                             requires beyond the image's toolkit (cuDNN, NCCL,
#                                             cuSPARSELt, NVSHMEM at its pins) and cuDSS, linked
#                                             into the image's /usr/local/cuda
#   install-cuda-pypi.sh ldconfig             teach the dynamic linker where the venv's NVIDIA
#                                             libraries are (does nothing unless CUDA_FROM is pypi)
# DIR holds official.json (torch-requirements.sh): the official torch wheel's NVIDIA pins, the one
# source of the versions built against here and required by the built torch at run time. Every
# NVIDIA library lands where PyTorch's finders look: include/ and lib64/ of /usr/local/cuda (with
# unversioned names), NVSHMEM at NVSHMEM_HOME=/opt/nvidia/nvshmem (/opt/nvidia is the venv's
# nvidia/ folder). What a build adds beyond the official pins is written to EXTRA_REQUIREMENTS,
# so the built torch requires it too.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
what=$1
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
EXTRA_REQUIREMENTS=/opt/cuda-extra-requirements.txt
# The toolkit's libraries when no official wheel names them (the official wheel's extras win).
default_libraries=cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx

# The official wheel's requirements: field "cuda" of official.json, one per line ('' without).
official_pins() {
  local file=$1/official.json
  [[ -s $file ]] || return 0
  python - "$file" <<'PY'
import json, sys
for line in json.load(open(sys.argv[1]))["cuda"]:
    print(line)
PY
}

# nvcc's extra leaves crt and nvvm unpinned: pip would take the newest (13.5 for a 13.0 nvcc),
# whose PTX 13.0's ptxas rejects ("Unsupported .version 9.5"). Pin them to nvcc's own version,
# read from the cuda-toolkit wheel's metadata.
compiler_constraints() {
  local version=$1 scratch metadata nvcc
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

# The NVIDIA wheels beyond the toolkit: the official pins of cuDNN, NCCL, cuSPARSELt and NVSHMEM
# (cuda-toolkit and cuda-bindings are not for the build), else cuDNN and NCCL unpinned; and cuDSS,
# which no official wheel pins (recorded in EXTRA_REQUIREMENTS once installed).
parity_requirements() {
  local major=$1 dir=$2 pins
  pins=$(official_pins "$dir" | grep -vE '^cuda-(toolkit|bindings)\b' || true)
  if [[ -z $pins ]]; then
    pins=$(printf 'nvidia-cudnn-cu%s\nnvidia-nccl-cu%s\n' "$major" "$major")
  fi
  printf '%s\nnvidia-cudss-cu%s\n' "$pins" "$major"
}

# The toolkit's extras the official wheel asks for, plus what the compile needs (nvcc, CCCL's
# headers, nvml.h for c10/cuda/driver_api.h, cuda_profiler_api.h for torch/csrc/cuda).
toolkit_extras() {
  local dir=$1 extras
  extras=$(official_pins "$dir" | grep -oP '^cuda-toolkit\[\K[^\]]*' || true)
  printf 'nvcc,cccl,nvml,profiler,%s' "${extras:-$default_libraries}"
}

record_extras() {
  local major=$1 version
  version=$(python -c "from importlib import metadata; print(metadata.version('nvidia-cudss-cu$major'))" 2>/dev/null || true)
  : >"$EXTRA_REQUIREMENTS"
  if [[ -n $version ]]; then
    printf 'nvidia-cudss-cu%s==%s; platform_system == "Linux"\n' "$major" "$version" >"$EXTRA_REQUIREMENTS"
  fi
  cat "$EXTRA_REQUIREMENTS"
}

# nvcc finds its own tree from its real path and passes -L$tree/lib64; the classic layout also
# has nvvm/lib64 and /usr/local/cuda.
link_toolkit() {
  local cu=$1 file
  ln -sfn lib "$cu/lib64"
  mkdir -p "$cu/nvvm/lib64"
  for file in "$cu"/lib/libnvvm.so*; do
    ln -sfn "../../lib/$(basename "$file")" "$cu/nvvm/lib64/"
  done
  ln -sfn "$cu" /usr/local/cuda
}

# No NVIDIA wheel ships the driver's link stub, and PyTorch's CMake links the driver
# (caffe2::cuda and caffe2_nvrtc name CUDA::cuda_driver, which FindCUDAToolkit takes from
# lib64/stubs/libcuda.so). Make one from cuda.h: every driver function the headers declare, under
# the soname of the real driver, so the linker records libcuda.so.1 and the driver serves it at
# run time. It lives in this build stage only; no runtime image copies it.
make_driver_stub() {
  local cu=$1
  mkdir -p "$cu/lib/stubs"
  python - "$cu/include/cuda.h" >/tmp/cuda-stub.c <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
names = set(re.findall(r"\b(cu[A-Z]\w*)\s*\(", text))
names |= set(re.findall(r"#define\s+cu[A-Z]\w*\s+(cu[A-Z]\w*)", text))
for name in sorted(names):
    print(f"void {name}(void) {{}}")
PY
  gcc -shared -fPIC -o "$cu/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 /tmp/cuda-stub.c
  rm /tmp/cuda-stub.c
  echo "torchkiln: driver stub $cu/lib/stubs/libcuda.so ($(nm -D --defined-only "$cu/lib/stubs/libcuda.so" | wc -l) functions)"
}

# Unversioned names in every NVIDIA wheel's lib folder (FindCUSPARSELT looks for libcusparseLt.so,
# the wheel ships libcusparseLt.so.0), and the NVIDIA wheels' headers and libraries inside the CUDA
# tree $1, where PyTorch's FindCUDNN, FindNCCL, FindCUSPARSELT and FindCUDSS look.
link_extras() {
  local tree=$1 major=$2 directory file name package
  for directory in "$site"/nvidia/*/lib; do
    for file in "$directory"/*.so.*; do
      [[ -e $file ]] || continue
      name=$(basename "$file")
      [[ -e $directory/${name%%.so.*}.so ]] || ln -s "$name" "$directory/${name%%.so.*}.so"
    done
  done
  ln -sfn "$site/nvidia" /opt/nvidia
  for package in cudnn nccl cusparselt; do
    [[ -d $site/nvidia/$package ]] || continue
    for file in "$site/nvidia/$package"/include/*; do ln -sfn "$file" "$tree/include/"; done
    for file in "$site/nvidia/$package"/lib/*; do ln -sfn "$file" "$tree/lib64/"; done
  done
  # cuDSS installs into nvidia/cuMAJOR: in the tree already when the tree is that folder.
  if [[ $(readlink -f "$tree") != $(readlink -f "$site/nvidia/cu$major") ]]; then
    for file in "$site/nvidia/cu$major"/include/cudss*.h; do
      [[ ! -e $file ]] || ln -sfn "$file" "$tree/include/"
    done
    for file in "$site/nvidia/cu$major"/lib/libcudss*; do
      [[ ! -e $file ]] || ln -sfn "$file" "$tree/lib64/"
    done
  fi
}

ldconfig_venv() {
  local conf=/etc/ld.so.conf.d/torchkiln-cuda-wheels.conf
  find "$site/nvidia" -mindepth 2 -maxdepth 2 -type d -name lib | sort >"$conf"
  cat "$conf"
  ldconfig
}

case $what in
  toolkit)
    version=$2 dir=$3 major=${2%%.*}
    if ((major < 13)); then
      echo "ERROR: CUDA_FROM=pypi needs CUDA 13 or newer (CUDA_VERSION is $version); NVIDIA's" \
        "CUDA 12 wheels have another layout: use CUDA_FROM=image for CUDA 12" >&2
      exit 1
    fi
    constraints=/tmp/cuda-compiler-constraints.txt
    compiler_constraints "$version" >"$constraints"
    mapfile -t parity < <(parity_requirements "$major" "$dir")
    cat "$constraints"
    printf 'torchkiln: also %s\n' "${parity[@]}"
    pip install "${wheelhouse_options[@]}" --constraint "$constraints" \
      "cuda-toolkit[$(toolkit_extras "$dir")]==$version" "${parity[@]}"
    rm "$constraints"
    cu=$site/nvidia/cu$major
    link_toolkit "$cu"
    make_driver_stub "$cu"
    link_extras "$cu" "$major"
    record_extras "$major"
    ldconfig_venv
    /usr/local/cuda/bin/nvcc --version | tail -2
    ;;
  parity)
    dir=$2
    major=$(/usr/local/cuda/bin/nvcc --version | grep -oP 'release \K[0-9]+')
    mapfile -t parity < <(parity_requirements "$major" "$dir")
    printf 'torchkiln: %s\n' "${parity[@]}"
    pip install "${wheelhouse_options[@]}" "${parity[@]}"
    link_extras /usr/local/cuda "$major"
    record_extras "$major"
    ;;
  ldconfig)
    [[ ${CUDA_FROM:-} != pypi ]] || ldconfig_venv
    ;;
  *)
    echo "usage: install-cuda-pypi.sh toolkit VERSION DIR | parity DIR | ldconfig" >&2
    exit 2
    ;;
esac

#!/bin/bash
# Build every CUDA extension for the archs in TORCH_CUDA_ARCH_LIST against the torch in $2 (the
# image's own), into $1: each source distribution named in EXTENSIONS (name==version, from the
# index or the wheelhouse), and each local folder mounted under /opt/src/extensions/N. A failure
# names the extension and the step, with the switch that fixes the usual causes.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
wheel_dir=$1 torch_wheels=$2
here=$(dirname "$0")
mkdir -p "$wheel_dir" /tmp/extensions
# Projects that download prebuilt binaries unless told to compile (flash-attn, mamba-ssm,
# causal-conv1d): torchkiln always compiles, for your CCA, against your torch.
export FLASH_ATTENTION_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
# torch_geometric's extensions (torch-scatter, -sparse, -cluster) build their CUDA variant only,
# whose library holds the CPU kernels too: half the compile (they compile one file at a time).
[[ ${FORCE_CUDA:-0} != 1 ]] || export FORCE_ONLY_CUDA=1

fail() {
  local name=$1 step=$2 log=$3 hint="see the lines above"
  if grep -qiE 'no CUDA GPUs are available|cuda\.is_available\(\)|found no NVIDIA driver' "$log"; then
    hint="it wants a GPU at build time; its force switch (FORCE_CUDA=1 is set) or a newer release may build without one"
  elif grep -qiE 'urlopen|urllib|HTTPError|Downloading https?://.*\.(whl|so|tar)' "$log"; then
    hint="it downloads prebuilt binaries; set the project's force-build switch (e.g. FLASH_ATTENTION_FORCE_BUILD=TRUE, already set for the projects torchkiln knows)"
  elif grep -qE 'C\+\+20 or later|-std=c\+\+17' "$log"; then
    hint="it compiles as C++17, and this torch needs C++20: use a release made for this torch"
  fi
  echo "ERROR: extension $name failed at $step; $hint" >&2
  exit 1
}

build_one() {
  local name=$1 source_dir=$2 log
  log=$(mktemp)
  echo "torchkiln: extension $name"
  # torch is installed above, once for every extension.
  if ! "$here/build-wheel.sh" "$source_dir" "$wheel_dir" 2>&1 | tee "$log"; then
    fail "$name" "compile (pip wheel --no-build-isolation)" "$log"
  fi
}

# Extensions' setup.py imports torch even to say what they are: torch goes in first, and the
# source distributions are fetched without build isolation.
if compgen -G "$torch_wheels/*.whl" >/dev/null; then
  pip install "${wheelhouse_options[@]}" "$torch_wheels"/*.whl
fi
for spec in ${EXTENSIONS:-}; do
  name=${spec%%==*}
  download=/tmp/extensions/$name
  log=$(mktemp)
  if ! pip download --no-deps --no-binary :all: --no-build-isolation \
    "${wheelhouse_options[@]}" --dest "$download" "$spec" 2>&1 | tee "$log"; then
    fail "$name" "download of its source distribution $spec" "$log"
  fi
  archive=$(find "$download" -maxdepth 1 -name '*.tar.gz' -o -maxdepth 1 -name '*.zip' | head -1)
  mkdir -p "$download/src"
  case $archive in
    *.zip) python -m zipfile -e "$archive" "$download/src" ;;
    *) tar -xzf "$archive" -C "$download/src" ;;
  esac
  build_one "$name" "$(find "$download/src" -mindepth 1 -maxdepth 1 -type d | head -1)"
done
for folder in /opt/src/extensions/*/; do
  if [[ -e $folder/setup.py || -e $folder/pyproject.toml ]]; then
    build_one "local folder $(basename "$folder")" "$folder"
  fi
done
ls -l "$wheel_dir"

#!/bin/bash
# Build every CUDA extension against the installed torch (the torch-env stage's), into $1: each
# source distribution named in EXTENSIONS (name==version, from the index or the wheelhouse), and each
# local folder mounted under /opt/src/extensions/N. EXTENSION_ARCHS=cca (the default) compiles
# every nvcc call for exactly TORCH_CUDA_ARCH_LIST, whatever -gencode flags the project sets;
# as-is keeps the project's own. After each build, the wheel's SASS/PTX are read and compared
# with the CCA (one `torchkiln-extension:` line each, for invoke build's summary). A failure names
# the extension, its spec or folder, and the step, with the switch that fixes the usual causes.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
wheel_dir=$1
# Beside the vision and audio steps from the start: their share of the job budget counts this
# step before its first download ends (build-wheel.sh claims this step's share).
register_compile_step
here=$(dirname "$0")
mkdir -p "$wheel_dir" /tmp/extensions
export EXTENSION_ARCHS=${EXTENSION_ARCHS:-cca}
# Projects that download prebuilt binaries unless told to compile (flash-attn, mamba-ssm,
# causal-conv1d): torchkiln always compiles, for your CCA, against your torch.
export FLASH_ATTENTION_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
# torch_geometric's extensions (torch-scatter, -sparse, -cluster) build their CUDA variant only,
# whose library holds the CPU kernels too: half the compile (they compile one file at a time).
[[ ${FORCE_CUDA:-0} != 1 ]] || export FORCE_ONLY_CUDA=1

# fail NAME SOURCE STEP LOG [FOLDER]: the ERROR line, and the machine-readable line invoke build
# turns into its last line (with the folder's path on the host).
fail() {
  local name=$1 source=$2 step=$3 log=$4 folder=${5:-} hint="see the lines above" first
  # The nvcc wrapper's own diagnosis first (pip -v indents the build's lines).
  if grep -qE '^ *torchkiln-nvcc-hint: ' "$log"; then
    hint=$(grep -E '^ *torchkiln-nvcc-hint: ' "$log" | tail -1 | sed -E 's/^ *torchkiln-nvcc-hint: //')
  elif grep -qiE 'no CUDA GPUs are available|cuda\.is_available\(\)|found no NVIDIA driver' "$log"; then
    hint="it wants a GPU at build time; its force switch (FORCE_CUDA=1 is set) or a newer release may build without one"
  elif grep -qiE 'urlopen|urllib|HTTPError|Downloading https?://.*\.(whl|so|tar)' "$log"; then
    hint="it downloads prebuilt binaries; set the project's force-build switch (e.g. FLASH_ATTENTION_FORCE_BUILD=TRUE, already set for the projects torchkiln knows)"
  elif grep -qE 'C\+\+20 or later|-std=c\+\+17' "$log"; then
    hint="it compiles as C++17, and this torch needs C++20: use a release made for this torch"
  elif grep -qE '^ERROR: extension .* holds ' "$log"; then
    hint=$(grep -E '^ERROR: extension .* holds ' "$log" | tail -1 | sed 's/^ERROR: //')
  else
    # What the build itself said: a compiler's first error, else the last Python exception
    # (a setup.py's), never pip's wrapping of them.
    first=$(grep -E '(^|[ :)])(fatal )?error( [A-Za-z#0-9-]+)?: ' "$log" |
      grep -vE '^ *#|^ERROR: |subprocess-exited-with-error|metadata-generation-failed' |
      head -1 | sed -E 's/^[[:space:]]+//' | cut -c1-200 || true)
    if [[ -z $first ]]; then
      first=$(grep -E '^ *[A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Exit): ' "$log" |
        tail -1 | sed -E 's/^[[:space:]]+//' | cut -c1-200 || true)
    fi
    [[ -z $first ]] || hint="its build said: $first"
  fi
  python -m torchkiln.inimage.extreport failed --name "$name" --source "$source" \
    --step "$step" --hint "$hint" ${folder:+--folder "$folder"}
  echo "ERROR: extension $name ($source) failed at $step; $hint" >&2
  exit 1
}

# build_one NAME SOURCE TREE [FOLDER]
build_one() {
  local name=$1 source=$2 tree=$3 folder=${4:-} log before wheel started=$SECONDS
  log=$(mktemp)
  echo "torchkiln: extension $name ($source), EXTENSION_ARCHS=$EXTENSION_ARCHS"
  before=$(find "$wheel_dir" -maxdepth 1 -name '*.whl' | sort)
  # The nvcc wrapper logs what each call asked for: the report says why a wheel holds more.
  export TORCHKILN_NVCC_LOG=$log.nvcc TORCHKILN_BUILD_NAME=$name TORCHKILN_MODULES_LOG=$log.modules
  # torch is installed above, once for every extension.
  if ! "$here/build-wheel.sh" "$tree" "$wheel_dir" 2>&1 | tee "$log"; then
    fail "$name" "$source" "compile (pip wheel --no-build-isolation)" "$log" "$folder"
  fi
  wheel=$(comm -13 <(echo "$before") <(find "$wheel_dir" -maxdepth 1 -name '*.whl' | sort) | head -1)
  if [[ -z $wheel ]]; then
    echo "ERROR: pip wheel made no new wheel" | tee -a "$log"
    fail "$name" "$source" "compile (pip wheel --no-build-isolation)" "$log" "$folder"
  fi
  if ! python -m torchkiln.inimage.extreport report --name "$name" --source "$source" \
    --wheel "$wheel" --cca "${TORCH_CUDA_ARCH_LIST:-}" --policy "$EXTENSION_ARCHS" \
    --nvcc-log "$TORCHKILN_NVCC_LOG" --modules-log "$TORCHKILN_MODULES_LOG" --tree "$tree" --seconds $((SECONDS - started)) 2>&1 |
    tee -a "$log"; then
    fail "$name" "$source" "the arch check of its wheel" "$log" "$folder"
  fi
}

# What the venv held before this step: what the step adds (the projects' build requirements) is
# removed at the end, so that BuildKit's record of the step, kept for every extension rebuild,
# holds the wheels alone.
installed_before=$(command pip list --format=freeze | cut -d= -f1 | sort)
# Extensions' setup.py imports torch even to say what they are: torch-env installed it, and the
# source distributions are fetched without build isolation.
for spec in ${EXTENSIONS:-}; do
  name=${spec%%==*}
  download=/tmp/extensions/$name
  log=$(mktemp)
  if ! pip download --no-deps --no-binary :all: --no-build-isolation \
    "${wheelhouse_options[@]}" --dest "$download" "$spec" 2>&1 | tee "$log"; then
    fail "$name" "$spec" "download of its source distribution" "$log"
  fi
  archive=$(find "$download" -maxdepth 1 -name '*.tar.gz' -o -maxdepth 1 -name '*.zip' | head -1)
  mkdir -p "$download/src"
  case $archive in
    *.zip) python -m zipfile -e "$archive" "$download/src" ;;
    *) tar -xzf "$archive" -C "$download/src" ;;
  esac 2>&1 | tee -a "$log" || fail "$name" "$spec" "unpacking ${archive:-its download}" "$log"
  build_one "$name" "$spec" "$(find "$download/src" -mindepth 1 -maxdepth 1 -type d | head -1)"
done
for folder in /opt/src/extensions/*/; do
  if [[ -e $folder/setup.py || -e $folder/pyproject.toml ]]; then
    index=$(basename "$folder")
    name=$(python -m torchkiln.inimage.extreport name "$folder" --default "local-folder-$index")
    build_one "$name" "local folder $index" "$folder" "$index"
  fi
done
ls -l "$wheel_dir"
mapfile -t added < <(comm -13 <(echo "$installed_before") \
  <(command pip list --format=freeze | cut -d= -f1 | sort))
if ((${#added[@]})); then
  command pip uninstall --quiet --yes "${added[@]}"
fi
rm -rf /tmp/extensions  # the sources and their build trees

#!/bin/bash
# Build the wheel of the source tree $1 into $2 with pip (no build isolation: the build uses what
# is installed: the torch-env stage's torch, plus any wheels in $3), for the archs in
# TORCH_CUDA_ARCH_LIST; print the parallelism and sccache's statistics for invoke build's summary.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
source_dir=$1 wheel_dir=$2 preinstall=${3:-}
mkdir -p "$wheel_dir"
if [[ ! -e $source_dir/setup.py && ! -e $source_dir/pyproject.toml ]]; then
  echo "torchkiln: $source_dir is empty; nothing to build"
  exit 0
fi
name=$(basename "$source_dir")

if [[ ${USE_CUDA:-1} != 0 ]]; then
  # TORCH_CUDA_ARCH_LIST comes ready-made from invoke build (its one CCA parser), never from here.
  if [[ -z ${TORCH_CUDA_ARCH_LIST:-} ]]; then
    echo "ERROR: TORCH_CUDA_ARCH_LIST is empty; build with invoke build --cca 8.6 (it derives" \
      "it from CCA), or pass --build-arg TORCH_CUDA_ARCH_LIST" >&2
    exit 1
  fi
  if ! command -v "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" >/dev/null; then
    echo "ERROR: no nvcc at ${CUDA_HOME:-/usr/local/cuda}/bin: BUILD_IMAGE has no CUDA toolkit;" \
      "use an nvidia/cuda devel image, or CUDA_FROM=pypi on any apt-based image" >&2
    exit 1
  fi
  export TORCH_CUDA_ARCH_LIST
else
  unset TORCH_CUDA_ARCH_LIST
fi

# Parallel jobs: one budget, MAX_JOBS, else the cores but at most one job per 6 GB of memory (one
# flash-attention translation unit takes about 4.5 GB: pytorch/pytorch#124018; more jobs than
# memory allows ends in the OOM killer an hour in). BuildKit runs the steps built against torch
# (vision, audio, extensions) at the same time, or serves some from its cache: the ones that run
# share the budget (see below).
cores=$(nproc)
memory_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo max)
if [[ $limit =~ ^[0-9]+$ ]] && ((limit / 1024 < memory_kb)); then
  memory_kb=$((limit / 1024))
fi
by_memory=$((memory_kb / (6 * 1024 * 1024)))
((by_memory >= 1)) || by_memory=1
if [[ -n ${MAX_JOBS:-} ]]; then
  budget=$MAX_JOBS why="MAX_JOBS"
else
  budget=$((cores < by_memory ? cores : by_memory))
  why="$cores cores, $((memory_kb / 1024 / 1024)) GB memory: one job per 6 GB"
fi
# The steps that compile at once register in a folder they all mount (a shared cache mount) and
# split the budget between them: a sibling BuildKit serves from its cache takes nothing, one that
# starts later takes what is left (torchkiln.inimage.jobshare says how). Without the folder (the
# torch step, a GPU host), the whole budget.
MAX_JOBS=$budget steps=1
register_compile_step
if [[ -n ${TORCHKILN_STEP_MARKER:-} ]]; then
  # Siblings that start with this step register within seconds: claim after they have.
  settle=$((TORCHKILN_STEP_SINCE + ${TORCHKILN_STEP_SETTLE_S:-3} - $(date +%s)))
  ((settle <= 0)) || sleep "$settle"
  if claimed=$(python -m torchkiln.inimage.jobshare claim "$(dirname "$TORCHKILN_STEP_MARKER")" \
    "$TORCHKILN_STEP_MARKER" "$budget"); then
    read -r MAX_JOBS steps <<<"$claimed"
  fi
  ((steps == 1)) || why="$why, shared by the $steps compile steps running at once"
fi
echo "torchkiln: TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-none (CPU)} FORCE_CUDA=${FORCE_CUDA:-}"
export USE_CUDNN USE_NCCL USE_FLASH_ATTENTION USE_MEM_EFF_ATTENTION DEBUG
use_sccache
# A build farm's cores run compiles beside this machine's jobs (net.sh's farm_cores: what the
# scheduler says; 0 without a farm): as many more jobs, shared by the stages built at once.
cores_on_farm=$(farm_cores)
if ((cores_on_farm > 0)); then
  MAX_JOBS=$((MAX_JOBS + cores_on_farm / steps))
  why="$why, + the build farm's $cores_on_farm cores"
fi
export MAX_JOBS
echo "torchkiln-jobs: ${TORCHKILN_BUILD_NAME:-$name} MAX_JOBS=$MAX_JOBS ($why)"
source "$(dirname "$0")/extension-env.sh" "$source_dir" # sccache, nvcc wrapper (see there)

# BUILD_MAGMA=1 mounts magma's prefix at /opt/magma (empty otherwise): PyTorch's FindMAGMA
# looks in MAGMA_HOME, other find_package calls in CMAKE_PREFIX_PATH.
if compgen -G '/opt/magma/lib/libmagma.*' >/dev/null; then
  export MAGMA_HOME=/opt/magma USE_MAGMA=1
  export CMAKE_PREFIX_PATH=${CMAKE_PREFIX_PATH:+$CMAKE_PREFIX_PATH:}/opt/magma
  echo "torchkiln: USE_MAGMA=1 MAGMA_HOME=$MAGMA_HOME"
fi

# What the build needs installed, as --no-build-isolation expects: the torch it builds against
# (with its dependencies), the tree's requirement lists and its pyproject build requirements.
if compgen -G "$preinstall/*.whl" >/dev/null; then
  pip install "${wheelhouse_options[@]}" "$preinstall"/*.whl
fi
for list in requirements-build.txt requirements.txt; do
  if [[ -f $source_dir/$list ]]; then
    pip install "${wheelhouse_options[@]}" --requirement "$source_dir/$list"
  fi
done
mapfile -t build_requires < <(python - "$source_dir/pyproject.toml" <<'PY'
import re, sys
try:
    import tomllib
    with open(sys.argv[1], "rb") as handle:
        requires = tomllib.load(handle).get("build-system", {}).get("requires", [])
except FileNotFoundError:
    requires = []
except ModuleNotFoundError:  # Python 3.10 reads no TOML: the tree's requirement lists must do
    requires = []
# The torch family is what $3 installed; the index must never swap it.
for requirement in requires:
    if re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() not in ("torch", "torchvision", "torchaudio"):
        print(requirement)
PY
)
if ((${#build_requires[@]})); then
  pip install "${wheelhouse_options[@]}" "${build_requires[@]}"
fi

# A CUDA torch requires, as the official wheel of its version does, the NVIDIA wheels it was built
# against (their pins, read from that wheel's metadata, and what the build added such as cuDSS):
# the runtime image and every environment the exported wheel goes to get the same libraries.
requirements=/opt/torch-requirements/official.json
if [[ $name == pytorch && ${USE_CUDA:-1} != 0 && -s $requirements ]]; then
  PYTORCH_EXTRA_INSTALL_REQUIREMENTS=$(python - "$requirements" /opt/cuda-extra-requirements.txt <<'PY'
import json, pathlib, sys
lines = json.load(open(sys.argv[1]))["declare"]
extra = pathlib.Path(sys.argv[2])
if extra.is_file():
    lines += [line for line in extra.read_text().splitlines() if line.strip()]
print(" | ".join(lines))
PY
  )
  export PYTORCH_EXTRA_INSTALL_REQUIREMENTS
  echo "torchkiln: torch will require $PYTORCH_EXTRA_INSTALL_REQUIREMENTS"
fi

# torchvision, torchaudio and extensions compile through torch.utils.cpp_extension, which takes
# fewer archs than PyTorch's CMake (8.8, for one): refuse those in seconds, before the compile.
if [[ $name != pytorch && ${USE_CUDA:-1} != 0 && -n ${TORCH_CUDA_ARCH_LIST:-} ]]; then
  python -m torchkiln.inimage.wheelcheck --cpp-extension
fi

# `command pip`: no index is needed here, so the compile never sees the index token. -v: the
# build backend's own output (CMake's summary, ninja's [N/M] progress) reaches the log.
log=/tmp/torchkiln-build-$name.log
command pip wheel -v --no-build-isolation --no-deps --wheel-dir "$wheel_dir" "$source_dir" 2>&1 |
  tee "$log"
# This step's compiles (its own sccache server), as one machine-readable line for invoke build's
# summary; sccache is in every image's build base, and outside one (a bare GPU host) the build
# runs without it.
compile_cache_stats "${TORCHKILN_BUILD_NAME:-$name}"
# A CUDA build is a CUDA build with the archs asked for, and has what the official wheel has: the
# wheel is checked here, in seconds, before anything builds on it.
if [[ $name == pytorch ]]; then
  for wheel in "$wheel_dir"/torch-*.whl; do
    python -m torchkiln.inimage.wheelcheck "$wheel"
  done
  if [[ ${USE_CUDA:-1} != 0 && -s $requirements ]]; then
    python -m torchkiln.inimage.torchreqs parity "$log" "$requirements"
  fi
fi
# The compile step's peak memory (cgroup v2), against which MAX_JOBS can be tuned.
if [[ -r /sys/fs/cgroup/memory.peak ]]; then
  echo "torchkiln-memory: ${TORCHKILN_BUILD_NAME:-$name} peak=$(($(cat /sys/fs/cgroup/memory.peak) / 1024 / 1024)) MB MAX_JOBS=$MAX_JOBS"
fi

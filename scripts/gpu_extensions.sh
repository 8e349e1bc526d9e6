#!/bin/bash
# On a GPU host with torch, nvcc, cmake and ninja but no Docker and no network: build each given
# extension sdist for one CCA with docker/scripts/build-wheel.sh (the script the image's extension
# stage runs, with its nvcc wrapper and build hook, through scripts/measure_modules.py), and print
# for each: build time, wheel size, SASS/PTX (cuobjdump and the fatbin reader), the arch verdict
# (extreport), the arch and link audit of the wheel installed alone, the checks of its ops in
# scripts/gpu_extension_ops.py if it has some, and its own tests where its sdist ships them.
#
# Usage: scripts/gpu_extensions.sh OUT CCA POLICY SDIST…   (from the checkout's root)
#   POLICY   EXTENSION_ARCHS: cca (exactly the CCA) or as-is (the project's own flags)
#   MODES    (environment) TORCHKILN_EXTENSION_MODULES values to build in, one after the other,
#            the first the baseline; default: "off parallel" for a project whose setup.py turns
#            ninja off (today's way vs modules at once, ratio and wheel contents compared), else
#            "parallel" (one build)
#   WHEELS   (environment) a folder of wheels pip may install from (no network): the tests' needs
# OUT gets per sdist: each mode's build log, nvcc call log, modules record and wheel, the audit,
# the tests' output; summary.txt collects what is printed.
set -euo pipefail
(($# >= 4)) || { sed -n '2,17p' "$0" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd) cca=$2 policy=$3
shift 3
repo=$(pwd)
[[ $policy == cca || $policy == as-is ]] || {
  echo "ERROR: POLICY '$policy' is not an EXTENSION_ARCHS value; write cca or as-is" >&2; exit 2
}
for sdist in "$@"; do
  [[ -s $sdist ]] || { echo "ERROR: $sdist is missing or empty; carry it in (pip download --no-deps --no-binary :all: NAME==VERSION)" >&2; exit 2; }
done
export PYTHONPATH=$repo/src${PYTHONPATH:+:$PYTHONPATH}
. "$repo/scripts/gpu_host.sh"
[[ -z ${WHEELS:-} ]] || export PIP_FIND_LINKS=$WHEELS
# As build-extensions.sh: compile, for the CUDA variant only (PyG's extensions), never download.
export FORCE_CUDA=1 FORCE_ONLY_CUDA=1 FLASH_ATTENTION_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
export CAUSAL_CONV1D_FORCE_BUILD=TRUE CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} EXTENSION_ARCHS=$policy
cca_exports "$cca"
summary=$out/summary.txt
{
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU visible)")'
  echo "cores $(nproc), memory $(awk '/^MemTotal:/ {print int($2 / 1048576)}' /proc/meminfo) GB," \
    "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1); CCA $cca, EXTENSION_ARCHS=$policy"
} | tee "$summary"

one() {
  local sdist=$1 base name work tree modes mode wheel site run tests
  base=$(basename "$sdist") && name=${base%.tar.gz} && name=${name%.zip}
  work=$out/$name && rm -rf "$work" && mkdir -p "$work/src"
  case $sdist in
    *.zip) python3 -m zipfile -e "$sdist" "$work/src" ;;
    *) tar -xzf "$sdist" -C "$work/src" ;;
  esac
  tree=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d | head -1)
  if python3 -c 'import sys; from torchkiln.inimage import modules; sys.exit(not modules.ninja_off(sys.argv[1]))' "$tree"; then
    modes=${MODES:-off parallel}
  else
    modes=${MODES:-parallel}
  fi
  echo "=== $name (EXTENSION_ARCHS=$policy, CCA $cca, modes: $modes)"
  python3 "$repo/scripts/measure_modules.py" "$sdist" --cca "$TORCH_CUDA_ARCH_LIST" \
    --modes "${modes// /,}" --out "$work" --name "$name" || return 1
  mode=${modes##* }
  wheel=$(ls "$work/$mode"/*.whl)
  echo "wheel ($mode): $(basename "$wheel") $(stat -c %s "$wheel") bytes"
  python3 -m torchkiln.inimage.extreport report --name "$name" --source "$base" --wheel "$wheel" \
    --cca "$TORCH_CUDA_ARCH_LIST" --policy "$policy" --nvcc-log "$work/$mode-nvcc.jsonl" \
    --modules-log "$work/$mode-modules.log" --tree "$tree" | grep -v '^torchkiln-extension: ' || true
  site=$work/site && rm -rf "$site"
  python3 -m pip install -q --no-deps --target "$site" "$wheel"
  if [[ -x $CUDA_HOME/bin/cuobjdump ]]; then
    echo "cuobjdump: $(find "$site" -name '*.so' -exec "$CUDA_HOME/bin/cuobjdump" --list-elf --list-ptx {} + 2>&1 |
      grep -oE '(sm_[0-9]+[af]?)\.(cubin|ptx)' | sort | uniq -c | awk '{printf "%s x%s ", $2, $1}')"
  fi
  echo "--- arch and link audit of the wheel on this GPU"
  python3 -m torchkiln.smoke --audit-only --expect-cca "$cca" "$site" 2>&1 | tee "$work/audit.txt" || true
  echo "--- checks of its ops"
  (cd "$work" && PYTHONPATH=$site:$PYTHONPATH python3 "$repo/scripts/gpu_extension_ops.py" \
    "$(python3 -m torchkiln.inimage.extreport name "$tree" --default "$name")") || true
  tests=$(find "$tree" -maxdepth 1 -type d \( -name test -o -name tests \) | head -1)
  if [[ -n $tests ]]; then
    echo "--- its own tests ($(basename "$tests")/) against the wheel"
    run=$work/tests-run && rm -rf "$run" && cp -r "$tests" "$run"
    # From a folder of their own: the sdist's package (without compiled modules) must not shadow
    # the installed one.
    (cd "$run" && PYTHONPATH=$site:$PYTHONPATH python3 -m pytest -q -p no:cacheprovider . \
      >"$work/tests.log" 2>&1) || true
    tail -3 "$work/tests.log"
  else
    echo "--- its sdist ships no tests"
  fi
}
status=0
for sdist in "$@"; do
  one "$(cd "$(dirname "$sdist")" && pwd)/$(basename "$sdist")" 2>&1 | tee -a "$summary" ||
    status=1
done
exit $status

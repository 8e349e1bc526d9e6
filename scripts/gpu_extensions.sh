#!/bin/bash
# On a GPU host with torch and nvcc but no Docker: build a published CUDA extension (its sdist,
# $1) and the torchvision stand-in with docker/scripts/build-wheel.sh, the script the image's
# build stages run, for CCA 9.0 and for 8.6 (the arch lists from torchkiln's own CCA parser);
# run their ops on the GPU against the CPU; and let the arch audit say beforehand whether they
# can run. Then audit the whole site-packages. Results go to $2.
set -euo pipefail
sdist=$1 out=$2
repo=$(pwd)
mkdir -p "$out"
export PYTHONPATH=$repo/src
# build-wheel.sh calls `pip` and `python`; a bare host may only have python3.
shims=$(mktemp -d)
printf '#!/bin/sh\nexec python3 -m pip "$@"\n' >"$shims/pip"
printf '#!/bin/sh\nexec python3 "$@"\n' >"$shims/python"
chmod +x "$shims/pip" "$shims/python"
export PATH=$shims:$PATH FORCE_CUDA=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0), torch.cuda.get_arch_list())' | tee "$out/host.txt"
build_for() {
  local cca=$1 work=/tmp/torchkiln-gpu-$1 tree started
  rm -rf "$work" && mkdir -p "$work/src" "$work/wheels"
  eval "$(python3 -c "
from torchkiln import gpu
for name, value in gpu.cca_build_args('$cca').items():
    print(f'export {name}={value!r}')")"
  tar -xzf "$sdist" -C "$work/src"
  cp -r tests/fixtures/vision "$work/src/vision"
  started=$(date +%s)
  for tree in "$work"/src/*/; do
    docker/scripts/build-wheel.sh "$tree" "$work/wheels" >"$out/build-$cca-$(basename "$tree").log" 2>&1 &
  done
  wait
  echo "CCA $cca: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST built in $(($(date +%s) - started)) s" >"$work/built.txt"
  python3 -m pip install -q --no-deps --target "$work/site" "$work"/wheels/*.whl
}
# Both CCAs at once.
build_for 9.0 & build_for 8.6 &
wait
for cca in 9.0 8.6; do
  work=/tmp/torchkiln-gpu-$cca
  tee -a "$out/summary.txt" <"$work/built.txt"
  echo "--- audit of the $cca build on this GPU (before running anything):" | tee -a "$out/summary.txt"
  python3 -m torchkiln.smoke --audit-only "$work/site" | tee -a "$out/summary.txt" || true
  echo "--- the ops on the GPU:" | tee -a "$out/summary.txt"
  PYTHONPATH=$work/site:$PYTHONPATH python3 scripts/gpu_extension_ops.py | tee -a "$out/summary.txt"
done
echo "--- audit of the whole site-packages:" | tee -a "$out/summary.txt"
/usr/bin/time -f "audit wall %e s" python3 -m torchkiln.smoke --audit-only --json >"$out/audit-site.json" 2>"$out/audit-time.txt" || true
cat "$out/audit-time.txt" | tee -a "$out/summary.txt"
python3 - "$out/audit-site.json" <<'PY' | tee -a "$out/summary.txt"
import json, sys
import torch
data = json.load(open(sys.argv[1]))
rows = {row["package"]: row for row in data["packages"]}
print(f"{len(rows)} packages with CUDA code; ok={data['ok']}")
for name, row in sorted(rows.items()):
    print(f"  {name:28} {row['status']:5} sass={' '.join(row['sass'])} ptx={' '.join(row['ptx']) or '-'}")
arch = set(torch.cuda.get_arch_list())
torch_row = rows.get("torch")
if torch_row:
    print("torch.cuda.get_arch_list():", sorted(arch))
    libtorch = [f for f in torch_row["files"] if f["path"].endswith("libtorch_cuda.so")]
    if libtorch:
        print("libtorch_cuda.so SASS:", libtorch[0]["sass"], "PTX:", libtorch[0]["ptx"])
PY

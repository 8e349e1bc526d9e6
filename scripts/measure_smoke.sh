#!/bin/bash
# On a GPU host: time `python -m torchkiln.smoke` (wall clock and each row's seconds), each run
# but the last on a cold page cache (scripts/evict_page_cache.py drops it, as on a machine just
# started), every run with PYTHONDONTWRITEBYTECODE=1 as such hosts set it:
#   1 cold, the host's Python as it is (a host whose packages hold no bytecode compiles every
#     module again on every run);
#   2-3 cold, after byte-compiling the import paths as pip does when it installs a wheel (so as
#     in an image torchkiln built: its pip wrote the bytecode at install);
#   4 warm, bytecode there.
# The goal is <= 10 s for the first run after a build (runs 2-3). Usage:
#   scripts/measure_smoke.sh OUT [CCA]   (from the checkout)
set -uo pipefail
mkdir -p "$1"
out=$(cd "$1" && pwd) cca=${2:-9.0}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1
run() {
  local label=$1 started seconds
  started=$(date +%s.%N)
  python3 -m torchkiln.smoke --json --expect-cca "$cca" >"$out/$label.json" 2>"$out/$label.err"
  local status=$?
  seconds=$(python3 -c "import time; print(f'{time.time() - $started:.2f}')")
  python3 - "$out/$label.json" "$label" "$seconds" "$status" <<'PY'
import json, sys
path, label, wall, status = sys.argv[1:]
try:
    data = json.load(open(path))
except ValueError:
    print(f"{label}: exit {status}, {wall} s wall, no JSON (see {path[:-5]}.err)")
    sys.exit()
print(f"{label}: exit {status}, {wall} s wall ({data['seconds']:.2f} s in the process)")
for check in data["checks"]:
    print(f"  {check['name']:<24} {check['status']:<5} {check['seconds']:6.2f} s  {check['detail'][:90]}")
PY
}
cold() { python3 scripts/evict_page_cache.py; }
cold && run 1-cold-host-bytecode-as-is
started=$(date +%s)
python3 - <<'PY'
import compileall, site, sys
folders = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
folders.append("src")  # torchkiln's own, as the image compiles it
ok = all(compileall.compile_dir(f, quiet=1, workers=0) for f in folders)
print("byte-compiled", ", ".join(folders), "" if ok else "(some files failed)")
PY
echo "byte-compiling took $(($(date +%s) - started)) s"
cold && run 2-cold-bytecode
cold && run 3-cold-bytecode-again
run 4-warm

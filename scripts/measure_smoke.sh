#!/bin/bash
# On a GPU host, as the first thing after it starts (cold file cache, no bytecode written yet):
# time `python -m torchkiln.smoke` four times, wall clock and each row's seconds:
#   1-2 with PYTHONDONTWRITEBYTECODE=1 (as such hosts set it: every run compiles the modules'
#       bytecode again), 3 without it (writes the bytecode), 4 with the bytecode cached.
# The goal is <= 10 s for run 1. Usage: scripts/measure_smoke.sh OUT [CCA]  (from the checkout)
set -uo pipefail
mkdir -p "$1"
out=$(cd "$1" && pwd) cca=${2:-9.0}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1
run() {
  local label=$1 started seconds
  shift
  started=$(date +%s.%N)
  env "$@" python3 -m torchkiln.smoke --json --expect-cca "$cca" >"$out/$label.json" 2>"$out/$label.err"
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
run 1-first-run-no-bytecode PYTHONDONTWRITEBYTECODE=1
run 2-no-bytecode PYTHONDONTWRITEBYTECODE=1
run 3-writes-bytecode -u PYTHONDONTWRITEBYTECODE
run 4-bytecode-cached -u PYTHONDONTWRITEBYTECODE

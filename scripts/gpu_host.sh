#!/bin/bash
# Sourced by the scripts/gpu_*.sh builds on a GPU host without Docker or network: build-wheel.sh
# calls `pip` and `python`, and a bare host may only have python3; pip takes no index (what is
# missing comes from PIP_FIND_LINKS, carried in).
shims=$(mktemp -d)
printf '#!/bin/sh\nexec python3 -m pip "$@"\n' >"$shims/pip"
printf '#!/bin/sh\nexec python3 "$@"\n' >"$shims/python"
chmod +x "$shims/pip" "$shims/python"
export PATH=$shims:$PATH PIP_NO_INDEX=1

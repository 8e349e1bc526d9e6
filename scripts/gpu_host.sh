#!/bin/bash
# Sourced by the scripts/gpu_*.sh builds on a GPU host without Docker or network: build-wheel.sh
# calls `pip` and `python`, and a bare host may only have python3; pip takes no index (what is
# missing comes from PIP_FIND_LINKS, carried in).
shims=$(mktemp -d)
printf '#!/bin/sh\nexec python3 -m pip "$@"\n' >"$shims/pip"
printf '#!/bin/sh\nexec python3 "$@"\n' >"$shims/python"
chmod +x "$shims/pip" "$shims/python"
export PATH=$shims:$PATH PIP_NO_INDEX=1
# The build args of a CCA from torchkiln.gpu.cca_build_args (the product's one CCA parser),
# exported: TORCH_CUDA_ARCH_LIST and the projects' own arch variables. Usage: cca_exports 9.0
cca_exports() {
  eval "$(PYTHONPATH=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src python3 -c "
import sys
from torchkiln import gpu
for name, value in gpu.cca_build_args(sys.argv[1]).items():
    print(f'export {name}={value!r}')" "$1")"
}

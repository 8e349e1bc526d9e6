#!/bin/bash
# What torch.compile needs at run time, in every image: Inductor's CPU backend compiles C++ and
# Triton builds its launcher with gcc against Python.h on first use. A C/C++ compiler, and the
# headers of the image's own Python (the distro's -dev package; uv's CPython ships its headers).
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
packages=(g++)
include=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [[ ! -f $include/Python.h ]]; then
  # The venv's Python is the distro's python3 (install-python.sh): its headers are python3-dev.
  packages+=(python3-dev)
fi
apt_install "${packages[@]}"
test -f "$include/Python.h"
python - <<'PY'
import shutil, sysconfig
print("torchkiln: C++ compiler", shutil.which("g++"), "and", sysconfig.get_paths()["include"] + "/Python.h")
PY

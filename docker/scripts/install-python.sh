#!/bin/bash
# Create the virtual environment $2 with Python $1 (e.g. 3.12), plus any extra apt packages.
# Python comes from the distro when its python3 is that version (tested in CI on Debian 12 with
# 3.11; Ubuntu 24.04 ships 3.12), otherwise from uv's managed CPython (python-build-standalone).
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
python_version=$1 venv=$2
shift 2
apt_install ca-certificates python3 python3-venv "$@"
distro_version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ $distro_version == "$python_version" ]]; then
  python3 -m venv "$venv"
else
  echo "torchkiln: the distro's python3 is $distro_version, not $python_version; installing it with uv"
  python3 -m venv /tmp/uv
  with_index_token /tmp/uv/bin/pip install --no-cache-dir uv
  UV_PYTHON_INSTALL_DIR=/opt/python /tmp/uv/bin/uv python install "$python_version"
  UV_PYTHON_INSTALL_DIR=/opt/python /tmp/uv/bin/uv venv --seed --python "$python_version" "$venv"
  rm -rf /tmp/uv
fi
"$venv/bin/python" --version

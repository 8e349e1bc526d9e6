#!/bin/bash
# `install-wheels.sh wheels DIR`: install the wheels in DIR (torch & co.) into the active Python.
# `install-wheels.sh requirements FILE`: install a requirement list, never replacing the torch
# packages already there. With a non-empty /wheelhouse, both install with no index (air-gapped).
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
what=$1 path=$2
case $what in
  wheels)
    if compgen -G "$path/*.whl" >/dev/null; then
      pip install "${wheelhouse_options[@]}" "$path"/*.whl
    fi
    ;;
  requirements)
    # Pin what is installed of the torch family, so a requirement can never swap torch out.
    python - >/tmp/torch-constraints.txt <<'PY'
from importlib import metadata
for name in ("torch", "torchvision", "torchaudio", "triton"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
PY
    cat /tmp/torch-constraints.txt
    pip install "${wheelhouse_options[@]}" --constraint /tmp/torch-constraints.txt --requirement "$path"
    rm /tmp/torch-constraints.txt
    ;;
  *)
    echo "usage: install-wheels.sh wheels DIR | requirements FILE" >&2
    exit 2
    ;;
esac

#!/bin/bash
# `install-wheels.sh wheels DIR`: install the wheels in DIR (torch & co.) into the active Python.
# `install-wheels.sh requirements FILE`: install a requirement list, never replacing the torch
# packages already there.
# `install-wheels.sh nvidia DIR`: install the NVIDIA wheels and the Triton the official torch of
# this version requires (field "declare" of DIR/official.json, torch-requirements.sh: what a
# torch built here declares too), and in a build stage the CUDA wheels the build adds (cuDSS);
# nothing for a CPU torch.
# With a non-empty /wheelhouse, all install with no index (air-gapped).
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
  nvidia)
    if [[ -s $path/official.json ]]; then
      python - "$path/official.json" >/tmp/torch-nvidia.txt <<'PY'
import json, sys
for line in json.load(open(sys.argv[1]))["declare"]:
    print(line)
PY
      if [[ -s /opt/cuda-extra-requirements.txt ]]; then
        cat /opt/cuda-extra-requirements.txt >>/tmp/torch-nvidia.txt
      fi
      if [[ -s /tmp/torch-nvidia.txt ]]; then
        pip install "${wheelhouse_options[@]}" --requirement /tmp/torch-nvidia.txt
      fi
      rm /tmp/torch-nvidia.txt
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
    echo "usage: install-wheels.sh wheels DIR | requirements FILE | nvidia DIR" >&2
    exit 2
    ;;
esac

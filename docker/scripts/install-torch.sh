#!/bin/bash
# Install the torch wheels in $1 (the `torch` stage: built here, or the official wheel) and what
# they require into the build environment, once: torchvision, torchaudio and the extensions are
# all built on this install (each of their steps installing it again cost half a minute and a
# copy of torch, gigabytes with its NVIDIA libraries, in each step's layer).
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
if compgen -G "$1/*.whl" >/dev/null; then
  pip install "${wheelhouse_options[@]}" "$1"/*.whl
else
  echo "torchkiln: no torch wheel in $1; the build stages install none"
fi

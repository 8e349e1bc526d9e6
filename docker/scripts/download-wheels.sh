#!/bin/bash
# download-wheels.sh DIR NAME…: put the official wheels of NAME (torch, torchvision, torchaudio)
# into DIR, without dependencies (they install later, from the same index or the wheelhouse).
# A non-empty local wheelhouse at /wheelhouse replaces every index (air-gapped); from it, torch
# is required and torchvision/torchaudio are taken when the wheelhouse holds them.
# The index: see torch_index_options in net.sh.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
wheel_dir=$1
shift
mkdir -p "$wheel_dir"
wanted=()
for name in "$@"; do
  version_name=${name^^}_VERSION
  [[ $name == torch ]] && version_name=PYTORCH_VERSION
  version=${!version_name:-}
  if [[ -z $version ]]; then
    echo "torchkiln: no $version_name; $name is not installed"
  elif [[ $name != torch && ${#wheelhouse_options[@]} -gt 0 ]] &&
    ! compgen -G "/wheelhouse/$name-*.whl" >/dev/null; then
    echo "torchkiln: no $name wheel in the wheelhouse; $name is not installed"
  else
    wanted+=("$name==$version")
  fi
done
torch_index_options
pip download --no-deps "${torch_index[@]}" --dest "$wheel_dir" "${wanted[@]}"
ls -l "$wheel_dir"

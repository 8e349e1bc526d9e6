#!/bin/bash
# Put the Triton that the PyTorch source tree $1 pins (.ci/docker/triton_version.txt) into $2 next
# to the torch wheel: torch.compile on the GPU needs exactly that release. A CPU build needs none.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
source_dir=$1 wheel_dir=$2
if [[ ${USE_CUDA:-1} == 0 ]]; then
  echo "torchkiln: CPU build (USE_CUDA=0): no Triton"
  exit 0
fi
pin=$source_dir/.ci/docker/triton_version.txt
if [[ ! -f $pin ]]; then
  echo "torchkiln: $source_dir pins no Triton ($pin is missing); torch.compile on the GPU needs one"
  exit 0
fi
version=$(tr -d '[:space:]' <"$pin")
pip download --no-deps "${wheelhouse_options[@]}" --dest "$wheel_dir" "triton==$version"
echo "torchkiln: triton $version, as $pin pins"

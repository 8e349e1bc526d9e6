#!/bin/bash
# BUILD_MODE=wheels: put the official torch/torchvision/torchaudio wheels into $1 (no deps).
# A non-empty local wheelhouse at /wheelhouse replaces every index (air-gapped); from it, torch
# is required and torchvision/torchaudio are taken when the wheelhouse holds them.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
wheel_dir=$1
mkdir -p "$wheel_dir"
wanted=("torch==$PYTORCH_VERSION")
if compgen -G '/wheelhouse/*.whl' >/dev/null; then
  source_options=(--no-index --find-links /wheelhouse)
  for name in torchvision torchaudio; do
    version_name=${name^^}_VERSION
    if [[ -n ${!version_name} ]] && compgen -G "/wheelhouse/$name-*.whl" >/dev/null; then
      wanted+=("$name==${!version_name}")
    else
      echo "torchkiln: no $name wheel in the wheelhouse; $name is not installed"
    fi
  done
else
  cuda_tag=cu$(cut -d. -f1,2 <<<"$CUDA_VERSION" | tr -d .)
  source_options=(--index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/$cuda_tag}")
  wanted+=("torchvision==$TORCHVISION_VERSION")
  [[ -z $TORCHAUDIO_VERSION ]] || wanted+=("torchaudio==$TORCHAUDIO_VERSION")
fi
pip download --no-deps "${source_options[@]}" --dest "$wheel_dir" "${wanted[@]}"
ls -l "$wheel_dir"

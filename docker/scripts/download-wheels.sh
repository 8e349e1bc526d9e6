#!/bin/bash
# download-wheels.sh DIR NAME…: put the official wheels of NAME (torch, torchvision, torchaudio)
# into DIR, without dependencies (they install later, from the same index or the wheelhouse).
# A non-empty local wheelhouse at /wheelhouse replaces every index (air-gapped); from it, torch
# is required and torchvision/torchaudio are taken when the wheelhouse holds them.
# The index: TORCH_INDEX_URL when set; else the Python index itself for CUDA_FROM=pypi (its
# torch wheels are CUDA builds that use NVIDIA's wheels), PyTorch's CPU index for CUDA_FROM=none,
# and PyTorch's index for the CUDA version otherwise.
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
index_options=("${wheelhouse_options[@]}")
if [[ ${#index_options[@]} -eq 0 && -n ${TORCH_INDEX_URL:-} ]]; then
  index_options=(--index-url "$TORCH_INDEX_URL")
elif [[ ${#index_options[@]} -eq 0 && $CUDA_FROM == none ]]; then
  index_options=(--index-url https://download.pytorch.org/whl/cpu)
elif [[ ${#index_options[@]} -eq 0 && $CUDA_FROM == image ]]; then
  cuda_tag=cu$(cut -d. -f1,2 <<<"$CUDA_VERSION" | tr -d .)
  index_options=(--index-url "https://download.pytorch.org/whl/$cuda_tag")
fi
pip download --no-deps "${index_options[@]}" --dest "$wheel_dir" "${wanted[@]}"
ls -l "$wheel_dir"

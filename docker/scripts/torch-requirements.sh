#!/bin/bash
# torch-requirements.sh DIR: what the official torch wheel of PYTORCH_VERSION requires, read from
# its metadata into DIR/official.json (torchkiln.inimage.torchreqs): the pinned NVIDIA wheels the
# CUDA build compiles against, the requirements the built torch declares, the features the parity
# report compares. pip reads the index's metadata file, not the whole wheel; a wheelhouse's torch
# wheel is read directly. A CPU build (CUDA_FROM=none) needs none of it: DIR stays empty.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
out=$1
mkdir -p "$out"
if [[ ${CUDA_FROM:-} == none ]]; then
  echo "torchkiln: CUDA_FROM=none: no CUDA requirements"
  exit 0
fi
source_file=
if ((${#wheelhouse_options[@]})); then
  source_file=$(compgen -G "/wheelhouse/torch-${PYTORCH_VERSION}-*.whl" ||
    compgen -G "/wheelhouse/torch-${PYTORCH_VERSION}+*.whl" || true)
  source_file=${source_file%%$'\n'*}
else
  torch_index_options
  if pip install --dry-run --quiet --no-deps --ignore-installed --report "$out/report.json" \
    "${torch_index[@]}" "torch==$PYTORCH_VERSION"; then
    source_file=$out/report.json
  fi
fi
if [[ -z $source_file ]]; then
  # A tree of an unreleased torch has no official wheel: nothing to pin or compare with.
  echo "torchkiln: WARNING no official torch $PYTORCH_VERSION wheel to read; NVIDIA wheels" \
    "unpinned, no parity report"
  exit 0
fi
python -m torchkiln.inimage.torchreqs official "$source_file" "$out/official.json"
rm -f "$out/report.json"

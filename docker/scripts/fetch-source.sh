#!/bin/bash
# Clone repository $1 at tag $2 with its submodules into $3; an empty tag leaves $3 empty.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
repository=$1 tag=$2 target=$3
mkdir -p "$target"
if [[ -z $tag || $tag == v ]]; then
  echo "torchkiln: no version for $repository; skipped"
  exit 0
fi
git clone --depth 1 --branch "$tag" --recurse-submodules --shallow-submodules --jobs 8 \
  "$repository" "$target"
rm -rf "$target/.git/objects/pack/"*.pack.tmp

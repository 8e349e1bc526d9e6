#!/bin/bash
# repair-wheels.sh IN OUT: wheels that travel. Each wheel compiled here (platform tag linux_*) is
# repaired as the official wheels are made: `auditwheel repair` bundles the system libraries it
# links (OpenBLAS, libgomp, libjpeg …) and gives it the manylinux tag its symbols allow. NVIDIA's
# libraries and the driver's are excluded (torch's metadata requires NVIDIA's wheels), and so is
# what another wheel of the set ships (torch's libraries, for torchvision). The repaired libraries
# then get rpaths into NVIDIA's wheels, which auditwheel drops. Other wheels are copied as they are.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
input=$1 output=$2
mkdir -p "$output"
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
wheels=("$input"/*.whl)
for wheel in "${wheels[@]}"; do
  [[ -e $wheel ]] || continue
  case $wheel in
    *-linux_*.whl) ;;
    *)
      cp "$wheel" "$output/"
      continue
      ;;
  esac
  mapfile -t patterns < <(python -m torchkiln.inimage.closure excludes "$wheel" "${wheels[@]}")
  ((${#patterns[@]})) || exit 1
  excludes=()
  for pattern in "${patterns[@]}"; do excludes+=(--exclude "$pattern"); done
  scratch=$(mktemp -d)
  echo "torchkiln: auditwheel repair $(basename "$wheel")"
  auditwheel repair "${excludes[@]}" --wheel-dir "$scratch" "$wheel"
  for repaired in "$scratch"/*.whl; do
    python -m torchkiln.inimage.closure rpaths "$site" "$repaired"
    echo "torchkiln-repaired: $(basename "$wheel") -> $(basename "$repaired")"
    mv "$repaired" "$output/"
  done
  rm -rf "$scratch"
done
ls -l "$output"

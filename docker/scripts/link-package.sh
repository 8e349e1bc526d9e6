#!/bin/bash
# Make /opt/torchkiln importable by the active Python, so `python -m torchkiln.smoke` works.
set -euo pipefail
site_packages=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo /opt/torchkiln >"$site_packages/torchkiln.pth"

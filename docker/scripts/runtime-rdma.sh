#!/bin/bash
# rdma-core's user-space libraries in a runtime image that holds a CUDA torch (CUDA_FROM image or
# pypi): NCCL opens libibverbs.so.1 at run time for InfiniBand/RoCE (no DT_NEEDED names it) and
# falls back to TCP sockets, with no error, when it is missing; libibverbs loads its device
# providers (mlx5, efa, ...) from ibverbs-providers. torchkiln.inimage.runtimelibs keeps the list
# of such libraries and the link audit warns when one is missing.
#   runtime-rdma.sh CUDA_FROM
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
if [[ $1 == none ]]; then
  echo "torchkiln: CPU torch (CUDA_FROM=none): no NCCL, no rdma-core"
  exit 0
fi
packages=(
  ibverbs-providers
  libibverbs1
  librdmacm1
)
apt_install "${packages[@]}"
ldconfig -p | grep -E 'lib(ibverbs|rdmacm)\.so\.1 ' >/dev/null
echo "torchkiln: rdma-core for NCCL:" "${packages[@]}"

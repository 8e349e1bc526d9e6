# shellcheck shell=bash
# Sourced by build-wheel.sh, after MAX_JOBS, with the source tree as $1: the environment of the
# builds that name no compiler launcher, i.e. torch.utils.cpp_extension and a project's own
# setup.py or CMake (torchvision, torchaudio, every extension).
#  - C and C++ through sccache: two-line compilers (cc, c++, gcc, g++ and the triplet names
#    Python's sysconfig uses) first on PATH, for this build only, each running sccache with the
#    real compiler. This step's own sccache server (net.sh's use_sccache) counts its compiles.
#  - nvcc through torchkiln.inimage.nvcc (sccache, EXTENSION_ARCHS, --threads), wherever a build
#    looks for it: cpp_extension runs $CUDA_HOME/bin/nvcc by absolute path (or PYTORCH_NVCC),
#    CMake runs CUDACXX, others run `nvcc` from PATH; a CUDA_HOME of links to the real one,
#    whose bin/nvcc is the wrapper, serves them all.
#  - A setup.py with use_ninja=False: its extension modules built at once (setuptools' build_ext
#    parallel, through DIST_EXTRA_CONFIG and torchkiln's build hook), within MAX_JOBS.
#  - EXTENSION_ARCHS=cca (build-extensions.sh): the arch variables of projects that read their
#    own (FLASH_ATTN_CUDA_ARCHS, TCNN_CUDA_ARCHITECTURES, CMake's CUDAARCHS), from the CCA.
# PyTorch's own build names sccache as CMake's compiler launcher (torch-build's ENV): nothing more
# is needed there.

extension_env() {
  local tree=$1 tools python library real cuda_home shadow entry name triplet
  tools=$(mktemp -d /tmp/torchkiln-tools.XXXXXX)
  [[ -z ${CMAKE_CXX_COMPILER_LAUNCHER:-} ]] || return 0

  if [[ -n ${TORCHKILN_SCCACHE:-} ]]; then
    mkdir "$tools/launcher-bin"
    triplet=$(gcc -dumpmachine 2>/dev/null || true)
    for name in cc c++ gcc g++ ${triplet:+"$triplet-gcc" "$triplet-g++"}; do
      if command -v "$name" >/dev/null; then
        printf '#!/bin/sh\nexec %s %s "$@"\n' "$TORCHKILN_SCCACHE" "$(command -v "$name")" \
          >"$tools/launcher-bin/$name"
        chmod +x "$tools/launcher-bin/$name"
      fi
    done
    export TORCHKILN_LAUNCHER=$TORCHKILN_SCCACHE TORCHKILN_LAUNCHER_BIN=$tools/launcher-bin
    export PATH=$tools/launcher-bin:$PATH
  fi

  # A setup.py that turns ninja off: its modules at once, within MAX_JOBS (modules.py says how),
  # with or without CUDA.
  python=$(command -v python3 || command -v python)
  local modules
  modules=$("$python" -m torchkiln.inimage.modules env "$tree") || return 1
  eval "$modules"

  cuda_home=${CUDA_HOME:-/usr/local/cuda}
  real=$cuda_home/bin/nvcc
  [[ ${USE_CUDA:-1} != 0 && -x $real ]] || return 0
  if ! library=$("$python" -c 'import os, torchkiln.inimage.nvcc as m
print(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(m.__file__)))))'); then
    echo "ERROR: torchkiln.inimage is not importable by $python; extension-env.sh needs it on" \
      "PYTHONPATH (net.sh sets it in the build stages; on a host, PYTHONPATH=<checkout>/src)" >&2
    return 1
  fi
  # At one path for every build of a tree: cpp_extension puts -I$CUDA_HOME/include on each
  # command line and the headers' paths reach the preprocessed code, both of which sccache hashes
  # (a build stage's trees are at fixed paths); builds of other trees on one host run beside it.
  shadow=/tmp/torchkiln-cuda-$(id -u)-$(printf '%s' "$tree" | cksum | cut -d' ' -f1)
  rm -rf "$shadow" && mkdir -p "$shadow/bin"
  for entry in "$cuda_home"/*; do
    [[ $(basename "$entry") == bin ]] || ln -s "$entry" "$shadow/"
  done
  for entry in "$cuda_home"/bin/*; do
    [[ $(basename "$entry") == nvcc ]] || ln -s "$entry" "$shadow/bin/"
  done
  # -I: the wrapper sees no PYTHONPATH or user site of the build; the path comes as argv[1].
  cat >"$shadow/bin/nvcc" <<EOF
#!/bin/sh
# torchkiln's nvcc (docker/scripts/extension-env.sh): sccache, EXTENSION_ARCHS, --threads.
exec "$python" -I -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from torchkiln.inimage.nvcc import wrap; sys.exit(wrap(sys.argv[1:]))' "$library" "\$@"
EOF
  chmod +x "$shadow/bin/nvcc"
  export TORCHKILN_REAL_NVCC=$real CUDA_HOME=$shadow CUDA_PATH=$shadow
  export PYTORCH_NVCC=$shadow/bin/nvcc CUDACXX=$shadow/bin/nvcc CUDA_NVCC_EXECUTABLE=$shadow/bin/nvcc
  export PATH=$shadow/bin:$PATH TORCHKILN_EXTENSION_ARCHS=${EXTENSION_ARCHS:-as-is}
  # torch.utils.cpp_extension (2.x) puts a launcher before the compilers it runs when one is on
  # PATH: the compilers above and the wrapper already do, and sccache must not run the wrapper.
  export TORCH_NO_COMPILER_WRAPPER=1
  eval "$("$python" -m torchkiln.inimage.nvcc env "$tree")"
  # With a build farm, a call's parallelism comes from the farm's cores: no --split-compile, an
  # option sccache 0.16 does not know for nvcc (a compile it may not distribute or cache).
  if [[ -n ${SCCACHE_CONF:-} && -n ${TORCHKILN_NVCC_SPLIT:-} ]]; then
    unset TORCHKILN_NVCC_SPLIT
    echo "torchkiln: nvcc without --split-compile: the build farm spreads the compiles instead"
  fi
}
extension_env "$1"
unset -f extension_env

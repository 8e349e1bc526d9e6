# shellcheck shell=bash
# Sourced by every build script: pip index, APT mirror and the CA bundle secret, for one RUN only.
# The bundle is read from the BuildKit secret mount; nothing here writes it into the image.
ca_bundle=/run/secrets/ca_bundle
apt_options=()
if [[ -s $ca_bundle ]]; then
  export PIP_CERT=$ca_bundle SSL_CERT_FILE=$ca_bundle REQUESTS_CA_BUNDLE=$ca_bundle
  export CURL_CA_BUNDLE=$ca_bundle GIT_SSL_CAINFO=$ca_bundle
  # apt's https method runs as _apt, which cannot read the root-only secret mount.
  apt_options+=(-o "Acquire::https::CAInfo=$ca_bundle" -o "APT::Sandbox::User=root")
fi
[[ -n ${PIP_INDEX_URL:-} ]] || unset PIP_INDEX_URL
# A non-empty local wheelhouse (invoke build --wheelhouse DIR) replaces every index: air-gapped.
wheelhouse_options=()
if compgen -G '/wheelhouse/*.whl' >/dev/null; then
  wheelhouse_options=(--no-index --find-links /wheelhouse)
fi
# Where torch's own wheels come from, into the array torch_index: the wheelhouse when there is
# one; else TORCH_INDEX_URL when set; else the Python index itself for CUDA_FROM=pypi (its torch
# wheels are CUDA builds that use NVIDIA's wheels), PyTorch's CPU index for CUDA_FROM=none, and
# PyTorch's index for the CUDA version otherwise.
torch_index_options() {
  torch_index=("${wheelhouse_options[@]}")
  if [[ ${#torch_index[@]} -eq 0 && -n ${TORCH_INDEX_URL:-} ]]; then
    torch_index=(--index-url "$TORCH_INDEX_URL")
  elif [[ ${#torch_index[@]} -eq 0 && ${CUDA_FROM:-} == none ]]; then
    torch_index=(--index-url https://download.pytorch.org/whl/cpu)
  elif [[ ${#torch_index[@]} -eq 0 && ${CUDA_FROM:-} == image ]]; then
    torch_index=(--index-url "https://download.pytorch.org/whl/cu$(cut -d. -f1,2 <<<"$CUDA_VERSION" | tr -d .)")
  fi
}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# The in-image checks beside the scripts (the build-scripts stage): torchkiln.inimage, stdlib only.
scripts_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -d $scripts_dir/torchkiln ]]; then
  export PYTHONPATH=$scripts_dir${PYTHONPATH:+:$PYTHONPATH}
fi

# The index token secret becomes the password of PIP_INDEX_URL (user __token__ unless the URL
# names one) in a shell variable that is never exported: only pip commands run through
# `with_index_token` (and the `pip` function) see it, in their environment, for this RUN only.
# xtrace is off meanwhile, so `set -x` never prints it; pip itself prints it as ****.
index_url_with_token=
percent_encode() {
  local text=$1 encoded='' character i
  for ((i = 0; i < ${#text}; i++)); do
    character=${text:i:1}
    case $character in
      [A-Za-z0-9._~-]) encoded+=$character ;;
      *) printf -v character '%%%02X' "'$character" && encoded+=$character ;;
    esac
  done
  printf '%s' "$encoded"
}
case $- in *x*) net_xtrace=1 ;; *) net_xtrace=0 ;; esac
set +x
if [[ -s /run/secrets/pip_index_token && -n ${PIP_INDEX_URL:-} ]]; then
  if [[ $PIP_INDEX_URL =~ ^(https?://)(([^/@:]*)(:[^/@]*)?@)?(.*)$ ]]; then
    index_user=${BASH_REMATCH[3]:-__token__}
    index_url_with_token="${BASH_REMATCH[1]}${index_user}:$(percent_encode "$(tr -d '\r\n' </run/secrets/pip_index_token)")@${BASH_REMATCH[5]}"
    echo "torchkiln: the index token secret authenticates to PIP_INDEX_URL as $index_user"
  fi
elif [[ -s /run/secrets/pip_index_token ]]; then
  echo "torchkiln: PIP_INDEX_TOKEN is set but PIP_INDEX_URL is empty; the token is not used"
fi
((net_xtrace)) && set -x

# Run a command (a pip) with the token in PIP_INDEX_URL; without a token, just run it.
# Untraced (xtrace would print the token in the test below): it prints the command itself.
with_index_token() {
  { local xtrace=$- status=0; set +x; } 2>/dev/null
  [[ $xtrace != *x* ]] || echo "+ $*" >&2
  if [[ -n $index_url_with_token ]]; then
    PIP_INDEX_URL=$index_url_with_token "$@" || status=$?
  else
    "$@" || status=$?
  fi
  [[ $xtrace != *x* ]] || set -x
  return $status
}
pip() { with_index_token command pip "$@"; }

# sccache, the compile launcher of every build step (torchkiln.inimage.compilecache): the local
# cache on the step's cache mount, the team's COMPILE_CACHE (the BuildKit secret compile_cache)
# as a second level, and the build farm (secrets build_farm and build_farm_token). One sccache
# server per step, started here with these settings and stopped by compile_cache_stats. The URL
# and the token may hold secrets: exported for this RUN only, untraced, never printed. A farm
# that does not answer costs a timeout, and sccache compiles locally; a team store that does not
# answer keeps sccache's server from starting, so the step starts it again without the store
# (the local cache only) and says so: a cache never fails a build.
sccache_env() {
  local exports
  { local xtrace=$-; set +x; } 2>/dev/null
  if ! exports=$(python3 -m torchkiln.inimage.compilecache env "$@"); then
    [[ $xtrace != *x* ]] || set -x
    echo "ERROR: torchkiln.inimage.compilecache failed; see above" >&2
    return 1
  fi
  eval "$exports"
  [[ $xtrace != *x* ]] || set -x
}
use_sccache() {
  command -v sccache >/dev/null || return 0
  sccache_env || return 1
  mkdir -p "$SCCACHE_DIR"
  sccache --stop-server >/dev/null 2>&1 || true
  if ! sccache --start-server >/dev/null; then
    echo "warning: sccache did not start with the team's compile cache (COMPILE_CACHE does not answer?); building with the local cache only"
    sccache --stop-server >/dev/null 2>&1 || true
    # Every store variable the first settings set, then the local settings alone.
    unset $(compgen -e | grep -E '^(SCCACHE_|AWS_ACCESS_KEY_ID$|AWS_SECRET_ACCESS_KEY$)') 2>/dev/null || true
    sccache_env --local || return 1
    sccache --start-server >/dev/null
  fi
  TORCHKILN_SCCACHE=$(command -v sccache)
  export TORCHKILN_SCCACHE
}

# A compile step that may run beside others (vision, audio, extensions) says so once, at its
# start, in the folder they all mount: a marker it holds locked until its last process ends
# (torchkiln.inimage.jobshare reads them). Nothing without the folder (the torch step, a host).
register_compile_step() {
  local dir=${TORCHKILN_STEPS_DIR:-/run/torchkiln-steps}
  [[ -z ${TORCHKILN_STEP_MARKER:-} && -d $dir && -w $dir ]] || return 0
  command -v flock >/dev/null || return 0 # util-linux: in every Debian and Ubuntu base
  TORCHKILN_STEP_MARKER=$dir/$(cat /proc/sys/kernel/random/uuid).step
  exec {torchkiln_step_lock}>"$TORCHKILN_STEP_MARKER"
  flock "$torchkiln_step_lock"
  TORCHKILN_STEP_SINCE=$(date +%s)
  export TORCHKILN_STEP_MARKER TORCHKILN_STEP_SINCE
}

# The build farm's cores (the scheduler's count; 0 without a farm or when it does not answer).
farm_cores() {
  if [[ -n ${SCCACHE_CONF:-} ]] && command -v sccache >/dev/null; then
    sccache --dist-status 2>/dev/null | python3 -m torchkiln.inimage.compilecache cores
  else
    echo 0
  fi
}

# The step's one summary line (sccache's own counters, as JSON; with a farm, what the farm said
# at the end), then its server stops and the farm's client settings go.
compile_cache_stats() {
  command -v sccache >/dev/null || return 0
  local status=()
  if [[ -n ${SCCACHE_CONF:-} ]]; then
    sccache --dist-status >/dev/shm/torchkiln-dist-status.json 2>/dev/null || true
    status=(/dev/shm/torchkiln-dist-status.json)
  fi
  sccache --show-stats --stats-format=json |
    python3 -m torchkiln.inimage.compilecache stats "$1" "${status[@]}"
  sccache --stop-server >/dev/null 2>&1 || true
  [[ -z ${SCCACHE_CONF:-} ]] || rm -f "$SCCACHE_CONF" /dev/shm/torchkiln-dist-status.json
}

# Point the distro's archive (any source whose path is /ubuntu or /debian) at APT_MIRROR;
# Debian's security archive (/debian-security) and vendor repositories stay as they are.
use_apt_mirror() {
  [[ -n ${APT_MIRROR:-} ]] || return 0
  local pattern='https?://[^/ ]+/(ubuntu|debian)/?'
  local file
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $file ]] && sed -E -i "s#${pattern}( |$)#${APT_MIRROR%/}\\2#g" "$file"
  done
  return 0
}

apt_install() {
  use_apt_mirror
  apt-get "${apt_options[@]}" update
  apt-get "${apt_options[@]}" install -y --no-install-recommends "$@"
}

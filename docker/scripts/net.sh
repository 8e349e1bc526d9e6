# shellcheck shell=bash
# Sourced by every build script: pip index, APT mirror and the CA bundle secret, for one RUN only.
# The bundle is read from the BuildKit secret mount; nothing here writes it into the image.
ca_bundle=/run/secrets/ca_bundle
apt_options=()
if [[ -s $ca_bundle ]]; then
  export PIP_CERT=$ca_bundle SSL_CERT_FILE=$ca_bundle REQUESTS_CA_BUNDLE=$ca_bundle
  export CURL_CA_BUNDLE=$ca_bundle GIT_SSL_CAINFO=$ca_bundle
  apt_options+=(-o "Acquire::https::CAInfo=$ca_bundle")
fi
[[ -n ${PIP_INDEX_URL:-} ]] || unset PIP_INDEX_URL
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# Point the distro's main archive at APT_MIRROR (security and vendor repositories stay as they are).
use_apt_mirror() {
  [[ -n ${APT_MIRROR:-} ]] || return 0
  local pattern='https?://(archive\.ubuntu\.com|[a-z]{2}\.archive\.ubuntu\.com|deb\.debian\.org)/(ubuntu|debian)/?'
  local file
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $file ]] && sed -E -i "s#${pattern}( |$)#${APT_MIRROR%/}/\\3#g" "$file"
  done
  return 0
}

apt_install() {
  use_apt_mirror
  apt-get "${apt_options[@]}" update
  apt-get "${apt_options[@]}" install -y --no-install-recommends "$@"
}

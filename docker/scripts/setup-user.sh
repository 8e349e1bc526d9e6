#!/bin/bash
# The user/shell layer shared by Dockerfile and ngc.Dockerfile: the container user with the host's
# UID/GID (root when UID is 0), zsh with a prompt, sudo only when asked, the project directory.
# Reads UID, GID, USR, GRP, PASSWORDLESS_SUDO, PROJECT_ROOT from the environment (build ARGs).
#
# Base images bring users and groups of their own (ubuntu:24.04 has 'ubuntu' 1000:1000): ids are
# what own files, so an existing group with GID is reused under its name, an existing regular
# user with UID is renamed to USR (keeping its files), and a name that is taken gets a free one.
# A system account's id (below 1000) is never taken over: that is refused, naming the account.
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
here=$(dirname "$0")
# bash may shadow UID with its own read-only variable: read the build ARGs from the environment.
uid=$(printenv UID) gid=$(printenv GID)
packages=(ca-certificates git less tzdata zsh)
[[ $PASSWORDLESS_SUDO == 1 ]] && packages+=(sudo)
apt_install "${packages[@]}"

account() { getent "$1" "$2" | cut -d: -f"${3:-1}" || true; }
refuse() {
  echo "ERROR: $*" >&2
  exit 1
}

if [[ $uid == 0 ]]; then
  home=/root
  usermod --shell /bin/zsh root
else
  existing=$(account passwd "$uid")
  if [[ -n $existing && $uid -lt 1000 ]]; then
    refuse "UID $uid is the system account '$existing' in the base image; the container user" \
      "cannot take it over: use your own id of 1000 or more (invoke env --force --uid N)"
  fi
  # A user of the image holding the name USR under another id gives the name up (first: userdel
  # may take its personal group along, which must not be the group chosen below).
  holder=$(account passwd "$USR" 3)
  if [[ -n $holder && $holder != "$uid" ]]; then
    if ((holder < 1000)); then
      refuse "USR '$USR' is a system account (uid $holder) in the base image; choose another" \
        "name (invoke env --force --usr NAME)"
    fi
    echo "torchkiln: the base image's user '$USR' (uid $holder) is removed; UID $uid takes the name"
    userdel --remove "$USR" 2>/dev/null || userdel "$USR"
  fi
  # The group: the one with GID if the image has it, else GRP (or a free name) with GID.
  group=$(account group "$gid")
  if [[ -n $group ]]; then
    [[ $group == "$GRP" ]] || echo "torchkiln: GID $gid is group '$group' in the base image; using it"
  else
    group=$GRP
    if [[ -n $(account group "$group") ]]; then
      group="$GRP$gid"
      echo "torchkiln: group name '$GRP' is taken in the base image; GID $gid is named '$group'"
    fi
    groupadd --gid "$gid" "$group"
  fi
  # The user: the regular user with UID, renamed (keeping its files), or a new one.
  if [[ -n $existing ]]; then
    [[ $existing == "$USR" ]] || echo "torchkiln: UID $uid is '$existing' in the base image; renamed '$USR'"
    old_home=$(account passwd "$uid" 6)
    usermod --login "$USR" --gid "$gid" --shell /bin/zsh --home "/home/$USR" "$existing"
    if [[ -d $old_home && $old_home != "/home/$USR" ]]; then
      mv "$old_home" "/home/$USR"
    fi
    mkdir -p "/home/$USR"
    chown "$uid:$gid" "/home/$USR"
  else
    useradd --create-home --uid "$uid" --gid "$gid" --shell /bin/zsh "$USR"
  fi
  home=/home/$USR
  if [[ $PASSWORDLESS_SUDO == 1 ]]; then
    printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$USR" >"/etc/sudoers.d/$USR"
    chmod 0440 "/etc/sudoers.d/$USR"
  fi
  echo "torchkiln: container user $(id "$USR")"
fi
install -m 0644 -o "$uid" -g "$gid" "$here/zshrc" "$home/.zshrc"
# The image's virtual environment (still bare here) belongs to the user, who fills it next.
if [[ -n ${VIRTUAL_ENV:-} && -d $VIRTUAL_ENV ]]; then
  chown -R "$uid:$gid" "$VIRTUAL_ENV"
fi
mkdir -p "$PROJECT_ROOT"
chown "$uid:$gid" "$PROJECT_ROOT"

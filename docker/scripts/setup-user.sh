#!/bin/bash
# The user/shell layer shared by Dockerfile and ngc.Dockerfile: the container user with the host's
# UID/GID (root when UID is 0), zsh with a prompt, sudo only when asked, the project directory.
# Reads UID, GID, USR, GRP, PASSWORDLESS_SUDO, PROJECT_ROOT from the environment (build ARGs).
set -euo pipefail
# shellcheck source=docker/scripts/net.sh
source "$(dirname "$0")/net.sh"
here=$(dirname "$0")
# bash may shadow UID with its own read-only variable: read the build ARGs from the environment.
uid=$(printenv UID) gid=$(printenv GID)
packages=(ca-certificates git less tzdata zsh)
[[ $PASSWORDLESS_SUDO == 1 ]] && packages+=(sudo)
apt_install "${packages[@]}"

if [[ $uid == 0 ]]; then
  home=/root
  usermod --shell /bin/zsh root
else
  # Base images may already hold this id (ubuntu:24.04 has 'ubuntu' 1000:1000): the host's wins.
  existing_user=$(getent passwd "$uid" | cut -d: -f1 || true)
  [[ -z $existing_user ]] || userdel --remove "$existing_user" 2>/dev/null || userdel "$existing_user"
  ! getent passwd "$USR" >/dev/null || userdel --remove "$USR" 2>/dev/null || userdel "$USR"
  existing_group=$(getent group "$gid" | cut -d: -f1 || true)
  [[ -z $existing_group ]] || groupdel "$existing_group"
  ! getent group "$GRP" >/dev/null || groupdel "$GRP"
  groupadd --gid "$gid" "$GRP"
  useradd --create-home --uid "$uid" --gid "$gid" --shell /bin/zsh "$USR"
  home=/home/$USR
  if [[ $PASSWORDLESS_SUDO == 1 ]]; then
    printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$USR" >"/etc/sudoers.d/$USR"
    chmod 0440 "/etc/sudoers.d/$USR"
  fi
fi
install -m 0644 -o "$uid" -g "$gid" "$here/zshrc" "$home/.zshrc"
mkdir -p "$PROJECT_ROOT"
chown "$uid:$gid" "$PROJECT_ROOT"

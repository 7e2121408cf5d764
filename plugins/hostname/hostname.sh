#!/usr/bin/env bash
# The hostname plugin (see plugin.yaml). pre-init-host: set the name from $HostName, keeping
# what was there in $PluginStateDir; pre-clean-host: put it back.
set -euo pipefail
state=${PluginStateDir:?kiln sets PluginStateDir}
mkdir -p -m 700 "$state"
tag="# kiln hostname plugin"

set_name() {
  local want=$1
  if [ ! -f "$state/original" ]; then
    if [ -e /etc/hostname ]; then cp -p /etc/hostname "$state/etc-hostname"; fi
    hostname > "$state/original.tmp"
    mv "$state/original.tmp" "$state/original"
  fi
  printf '%s\n' "$want" > /etc/hostname.kiln-tmp
  chmod 644 /etc/hostname.kiln-tmp
  mv /etc/hostname.kiln-tmp /etc/hostname
  hostname "$want"
  # The name resolves to this host: kubeadm and many tools look it up.
  sed -i "/ $tag\$/d" /etc/hosts
  printf '%s %s %s\n' "$HostIP" "$want" "$tag" >> /etc/hosts
  echo "hostname: $(cat "$state/original") -> $want"
}

put_back() {
  [ -f "$state/original" ] || return 0
  if [ -f "$state/etc-hostname" ]; then cp -p "$state/etc-hostname" /etc/hostname; else rm -f /etc/hostname; fi
  hostname "$(cat "$state/original")"
  sed -i "/ $tag\$/d" /etc/hosts
  echo "hostname: back to $(cat "$state/original")"
  rm -f "$state/original" "$state/etc-hostname"
}

case "${PluginPhase:?}" in
  pre-init-host)
    if [ -z "${HostName:-}" ]; then
      echo "hostname: no HostName for $HostIP: it stays $(hostname)"
      exit 0
    fi
    set_name "$HostName"
    ;;
  pre-clean-host) put_back ;;
  *) echo "hostname: nothing to do in $PluginPhase" ;;
esac

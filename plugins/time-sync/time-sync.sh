#!/usr/bin/env bash
# The time-sync plugin (see plugin.yaml). pre-init-host: step the skewed clocks to the
# operator's time and configure chrony; pre-clean-host: restore chrony as it was.
set -euo pipefail
state=${PluginStateDir:?kiln sets PluginStateDir}
mkdir -p -m 700 "$state"
server=${TimeServer:-$Master0IP}
begin="# --- kiln time-sync: begin"
dropin_dir=/etc/systemd/system/chrony.service.d
dropin=$dropin_dir/kiln-time-sync.conf

chrony_conf() {
  for f in /etc/chrony/chrony.conf /etc/chrony.conf; do
    if [ -f "$f" ]; then echo "$f"; return 0; fi
  done
  return 1
}

chrony_unit() {
  if systemctl cat chrony.service >/dev/null 2>&1; then echo chrony; else echo chronyd; fi
}

# Whether this host may set the clock (a container usually may not: its clock is its host's).
can_set_clock() {
  local bounding
  bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (( (16#$bounding >> 25) & 1 ))
}

step_from_operator() {
  local target
  target=$(awk -v now="$(date +%s.%N)" -v offset="${ClockOffset:?kiln sets ClockOffset}" 'BEGIN { printf "%.3f", now - offset }')
  if ! date -s "@$target" >/dev/null; then
    echo "time-sync: cannot set the clock on $HostIP (no CAP_SYS_TIME? a container's clock is its host's)" >&2
    return 1
  fi
  echo "time-sync: clock stepped by $(awk -v o="$ClockOffset" 'BEGIN { printf "%+.1f", -o }') s to this operator's time"
}

configure_chrony() {
  local conf unit peers ip
  conf=$(chrony_conf) || { echo "time-sync: chrony is not installed on $HostIP: its clock was stepped once and will drift"; return 0; }
  unit=$(chrony_unit)
  if [ ! -f "$state/chrony.conf" ]; then
    cp -p "$conf" "$state/chrony.conf"
    systemctl is-active --quiet "$unit" && touch "$state/was-active"
    [ -d "$dropin_dir" ] && touch "$state/had-dropin-dir"
  fi
  # The site's sources (a public pool, unreachable here) give way to the cluster's.
  {
    sed -E '/^# --- kiln time-sync: begin/,$d; s/^(pool|server|peer)([[:space:]])/#kiln-time-sync# \1\2/' "$state/chrony.conf"
    echo "$begin (restored when the host is cleaned)"
    if [ "$HostIP" = "$server" ]; then
      echo "local stratum 10"
      peers="${MasterIPs:-},${NodeIPs:-}"
      for ip in ${peers//,/ }; do [ "$ip" = "$HostIP" ] || echo "allow $ip"; done
    else
      echo "server $server iburst"
    fi
    echo "makestep 1 3"
  } > "$conf.kiln-tmp"
  chmod --reference="$conf" "$conf.kiln-tmp"
  mv "$conf.kiln-tmp" "$conf"
  if ! can_set_clock; then
    # chronyd would not start (it wants CAP_SYS_TIME): run it without clock control, so it
    # still serves and tracks time.
    without_clock_control '$DAEMON_OPTS'
  fi
  systemctl daemon-reload
  if ! systemctl restart "$unit" && ! can_set_clock; then
    # An emulated host (qemu-user) cannot load chronyd's seccomp filter: without it.
    echo "time-sync: chronyd did not start; again without its seccomp filter"
    without_clock_control '$DAEMON_OPTS -F 0'
    systemctl daemon-reload
    systemctl restart "$unit"
  fi
  if [ "$HostIP" = "$server" ]; then
    echo "time-sync: chrony serves time to the cluster from $HostIP"
  else
    echo "time-sync: chrony follows $server"
  fi
}

# A drop-in that lets chronyd start without CAP_SYS_TIME (`-x`), with OPTIONS.
without_clock_control() {
  mkdir -p "$dropin_dir"
  printf '[Unit]\nConditionCapability=\n\n[Service]\nExecStart=\nExecStart=!/usr/sbin/chronyd %s -x\n' "$1" > "$dropin"
}

restore_chrony() {
  local conf unit
  [ -f "$state/chrony.conf" ] || return 0
  conf=$(chrony_conf) || conf=/etc/chrony/chrony.conf
  unit=$(chrony_unit)
  cp -p "$state/chrony.conf" "$conf"
  rm -f "$dropin"
  [ -f "$state/had-dropin-dir" ] || rmdir "$dropin_dir" 2>/dev/null || true
  systemctl daemon-reload
  if [ -f "$state/was-active" ]; then systemctl restart "$unit"; else systemctl stop "$unit" 2>/dev/null || true; fi
  rm -f "$state/chrony.conf" "$state/was-active" "$state/had-dropin-dir"
  echo "time-sync: chrony restored as it was"
}

case "${PluginPhase:?}" in
  pre-init-host)
    if [ -z "${ClockSkewHosts:-}" ]; then
      echo "time-sync: every clock is within the limit: nothing to do"
      exit 0
    fi
    case ",$ClockSkewHosts," in *",$HostIP,"*) step_from_operator ;; esac
    configure_chrony
    ;;
  pre-clean-host) restore_chrony ;;
  *) echo "time-sync: nothing to do in $PluginPhase" ;;
esac

#!/usr/bin/env bash
# make test-hosts: bring up 2 amd64 + 1 arm64 test hosts and check that they behave like servers:
# right CPU architecture, systemd running, distinct hostnames and machine-ids, cgroups of their
# own, root by password and by key, sudo with and without a password; power loss and power on;
# network partition and heal; and a teardown that leaves nothing behind. Prints `N passed,
# N failed` at the end.
set -uo pipefail
HOSTS=$(cd "$(dirname "$0")" && pwd)/hosts.sh
INV=$("$HOSTS" inventory)
passed=0
failed=0

check() { # DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then
    passed=$((passed + 1)); printf 'ok     %s\n' "$what"
  else
    failed=$((failed + 1)); printf 'FAILED %s\n' "$what"
  fi
}

on() { "$HOSTS" ssh "$@"; }
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$INV" "$1"; }
ip_of() { python3 -c 'import json,sys; print([h["ip"] for h in json.load(open(sys.argv[1]))["hosts"] if h["name"]==sys.argv[2]][0])' "$INV" "$1"; }

reachable() { timeout 8 ssh -i "$(field ssh_key)" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=3 -o BatchMode=yes "root@$(ip_of "$1")" true 2>/dev/null; }
unreachable() { ! reachable "$1"; }

expect_arch() { [ "$(on "$1" -- uname -m)" = "$2" ]; }
systemd_ok() { local s; s=$(on "$1" -- systemctl is-system-running --wait 2>/dev/null || true); [ "$s" = running ] || [ "$s" = degraded ] || { echo "  $1: systemd is $s" >&2; false; }; }
distinct() { [ "$(printf '%s\n' "$@" | sort -u | wc -l)" = "$#" ]; }
password_login() { sshpass -p "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["users"]["root"]["password"])' "$INV")" ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o PubkeyAuthentication=no -o ConnectTimeout=5 "root@$(ip_of "$1")" true; }
sudo_nopasswd() { [ "$(on --user deploy "$1" -- sudo -n id -u)" = 0 ]; }
sudo_needs_password() {
  ! on --user ops "$1" -- sudo -n true 2>/dev/null &&
    [ "$(on --user ops "$1" -- "echo kiln-e2e-ops | sudo -S -p '' id -u")" = 0 ]
}
# A cgroup one host's systemd makes (kubepods.slice, say) is its own: another host does not see
# it, and each host's processes live under the harness's per-host cgroup on this machine.
own_cgroups() {
  on kiln-h1 -- mkdir /sys/fs/cgroup/pids/kiln-probe.slice &&
    on kiln-h2 -- test ! -e /sys/fs/cgroup/pids/kiln-probe.slice &&
    [ -d /sys/fs/cgroup/pids/kiln-e2e/kiln-h1/kiln-probe.slice ] &&
    on kiln-h1 -- rmdir /sys/fs/cgroup/pids/kiln-probe.slice &&
    grep -q '^[0-9]*:pids:/kiln-e2e/kiln-h2$' "/proc/$(cat /run/kiln-e2e/hosts/kiln-h2/pid)/cgroup"
}
host_to_host() { on kiln-h1 -- ping -c1 -W2 "$(ip_of kiln-h3)" >/dev/null; }
nothing_left() {
  ! ip netns list | grep '^kiln-e2e' >/dev/null &&
    ! ip link show kiln-e2e0 >/dev/null 2>&1 &&
    ! ip -o link show | grep ': kv-' >/dev/null &&
    ! grep ' /run/kiln-e2e' /proc/mounts >/dev/null &&
    ! pgrep -f 'systemd-nspawn.*kiln-h' >/dev/null &&
    ! compgen -G '/sys/fs/cgroup/*/kiln-e2e' >/dev/null &&
    [ ! -e /run/kiln-e2e ]
}

INOTIFY_BEFORE=$(sysctl -n fs.inotify.max_user_instances fs.inotify.max_user_watches)
t0=$SECONDS
"$HOSTS" up --hosts 3 --arch amd64,amd64,arm64 || { echo "1 passed, 1 failed"; exit 1; }
echo "up took $((SECONDS - t0))s"
"$HOSTS" status

t0=$SECONDS
check "second up reuses running hosts" "$HOSTS" up --hosts 3 --arch amd64,amd64,arm64
echo "idempotent up took $((SECONDS - t0))s"
check "kiln-h1 is x86_64" expect_arch kiln-h1 x86_64
check "kiln-h2 is x86_64" expect_arch kiln-h2 x86_64
check "kiln-h3 is aarch64 (qemu-user)" expect_arch kiln-h3 aarch64
for h in kiln-h1 kiln-h2 kiln-h3; do check "$h runs systemd as PID 1 (running or degraded)" systemd_ok "$h"; done
check "hostnames are distinct" distinct "$(on kiln-h1 -- hostname)" "$(on kiln-h2 -- hostname)" "$(on kiln-h3 -- hostname)"
check "machine-ids are distinct" distinct "$(on kiln-h1 -- cat /etc/machine-id)" "$(on kiln-h2 -- cat /etc/machine-id)" "$(on kiln-h3 -- cat /etc/machine-id)"
check "SSH host keys are distinct" distinct "$(on kiln-h1 -- cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)" "$(on kiln-h2 -- cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)"
check "root logs in by password" password_login kiln-h2
check "deploy has passwordless sudo" sudo_nopasswd kiln-h1
check "ops needs a password for sudo" sudo_needs_password kiln-h3
check "hosts reach each other" host_to_host
check "each host has cgroups of its own" own_cgroups
check "refuses a host it did not create" bash -c "! '$HOSTS' ssh not-ours -- true 2>/dev/null"

check "up raises the inotify limits the hosts share" bash -c '[ "$(sysctl -n fs.inotify.max_user_instances)" -ge 8192 ]'
on kiln-h2 -- 'echo "10.213.0.99 kept.example # power loss" >> /etc/hosts'
"$HOSTS" stop kiln-h2
check "a stopped host is unreachable" unreachable kiln-h2
check "status shows it stopped" bash -c "'$HOSTS' status | grep 'kiln-h2.*stopped' >/dev/null"
t0=$SECONDS
"$HOSTS" start kiln-h2
check "it comes back after start" reachable kiln-h2
echo "restart took $((SECONDS - t0))s"
check "its disk is kept across the power loss, /etc/hosts too" on kiln-h2 -- grep -q kept.example /etc/hosts

"$HOSTS" partition kiln-h1
check "a partitioned host is unreachable" unreachable kiln-h1
check "status shows it partitioned" bash -c "'$HOSTS' status | grep 'kiln-h1.*partitioned' >/dev/null"
"$HOSTS" heal kiln-h1
check "a healed host is reachable" reachable kiln-h1

on kiln-h2 -- touch /root/left-behind
t0=$SECONDS
"$HOSTS" reset kiln-h2
check "reset gives a fresh root filesystem" bash -c "! '$HOSTS' ssh kiln-h2 -- test -e /root/left-behind"
check "a reset host is up again" reachable kiln-h2
echo "reset took $((SECONDS - t0))s"

"$HOSTS" down
check "down leaves no namespace, link, mount, process or cgroup behind" nothing_left
check "down restores the inotify limits" [ "$(sysctl -n fs.inotify.max_user_instances fs.inotify.max_user_watches)" = "$INOTIFY_BEFORE" ]

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

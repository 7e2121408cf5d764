#!/usr/bin/env bash
# e2e/hosts.sh — real, heterogeneous test hosts on this machine (run as root).
#
# Each host is a Debian root filesystem (debootstrap minbase, cached as a tarball per OS and
# architecture) mounted as an overlay, booted with systemd as PID 1 by systemd-nspawn in its own
# network namespace, joined to a private bridge by a veth pair. ARM64 hosts run their arm64
# userland under qemu-user-static through binfmt_misc; `arm64-vm` hosts are arm64 virtual
# machines instead (hosts-vm.sh: a kernel of their own, where containers run). Hosts have no
# route to the internet.
#
#   hosts.sh up [--hosts N] [--arch amd64,arm64,arm64-vm,...] [--os bookworm|bullseye]
#   hosts.sh status | down | reset [NAME...]
#   hosts.sh ssh [--user USER] NAME -- CMD...
#   hosts.sh stop NAME | start NAME          (power loss / power on)
#   hosts.sh partition NAME | heal NAME      (cut off the bridge / reconnect)
#   hosts.sh inventory                       (path of the inventory JSON)
#
# Everything it makes is named kiln-e2e* / kv-* and lives under $STATE; it refuses to touch
# hosts that are not in its inventory.
set -euo pipefail
. "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/hosts-vm.sh"
. "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/hosts-cgroup.sh"

CACHE=${KILN_E2E_CACHE:-/var/cache/kiln-e2e}
STATE=${KILN_E2E_STATE:-/run/kiln-e2e}
MIRROR=${KILN_E2E_MIRROR:-http://deb.debian.org/debian}
BRIDGE=kiln-e2e0
NET=10.213.0
GATEWAY=$NET.1
NS_PREFIX=kiln-e2e
INVENTORY=$STATE/inventory.json
KEY=$CACHE/id_ed25519
ROOT_PASSWORD=kiln-e2e-root
SUDO_USER_NOPASSWD=deploy
SUDO_USER_PASSWD=ops
SUDO_USER_PASSWORD=kiln-e2e-ops
PACKAGES=systemd,systemd-sysv,dbus,openssh-server,iproute2,kmod,procps,sudo,iputils-ping,ca-certificates,python3,python3-yaml,zstd,chrony,nftables
# Bumped whenever PACKAGES or customize_rootfs change, so cached root filesystems are rebuilt.
ROOTFS_REVISION=5

log() { printf '%s\n' "$*" >&2; }
die() { printf 'hosts.sh: error: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

host_dir() { printf '%s/hosts/%s' "$STATE" "$1"; }
host_ns() { printf '%s-%s' "$NS_PREFIX" "${1#kiln-}"; }
host_veth() { printf 'kv-%s' "${1#kiln-}"; }

# --- inventory -------------------------------------------------------------------------------

inventory_hosts() { [ -f "$INVENTORY" ] && python3 -c 'import json,sys; [print(h["name"]) for h in json.load(open(sys.argv[1]))["hosts"]]' "$INVENTORY" || true; }

host_field() { # NAME FIELD
  python3 - "$INVENTORY" "$1" "$2" <<'PY'
import json, sys
inv = json.load(open(sys.argv[1]))
for h in inv["hosts"]:
    if h["name"] == sys.argv[2]:
        print(h.get(sys.argv[3], "container" if sys.argv[3] == "machine" else ""))
        break
else:
    sys.exit(1)
PY
}

require_host() {
  [ -f "$INVENTORY" ] || die "no test hosts are up (run: hosts.sh up)"
  inventory_hosts | grep -x "$1" >/dev/null || die "\`$1\` is not a test host made by this tool (hosts: $(inventory_hosts | tr '\n' ' '))"
}

write_inventory() { # HOST_LINES: lines "name ip arch os machine"
  mkdir -p "$STATE"
  (umask 077; : > "$INVENTORY.tmp")
  HOST_LINES=$1 python3 - "$INVENTORY.tmp" "$KEY" "$ROOT_PASSWORD" "$SUDO_USER_NOPASSWD" "$SUDO_USER_PASSWD" "$SUDO_USER_PASSWORD" "$NET" "$GATEWAY" "$BRIDGE" <<'PY'
import json, os, sys
path, key, root_pw, nopw_user, pw_user, pw, net, gw, bridge = sys.argv[1:]
hosts = []
for line in os.environ["HOST_LINES"].splitlines():
    if not line.strip():
        continue
    name, ip, arch, os_, machine = line.split()
    hosts.append({"name": name, "ip": ip, "arch": arch, "os": os_, "machine": machine, "ssh_port": 22})
inv = {
    "subnet": net + ".0/24",
    "gateway": gw,
    "bridge": bridge,
    "ssh_key": key,
    "users": {
        "root": {"password": root_pw, "key": True},
        nopw_user: {"password": None, "key": True, "sudo": "nopasswd"},
        pw_user: {"password": pw, "key": True, "sudo": "password"},
    },
    "hosts": hosts,
}
json.dump(inv, open(path, "w"), indent=2)
PY
  mv "$INVENTORY.tmp" "$INVENTORY"
}

# --- root filesystems ------------------------------------------------------------------------

ensure_binfmt() {
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "qemu-aarch64 binfmt handler is not registered (install qemu-user-static binfmt-support)"
  # setuid programs (sudo) get root under emulation only with the C (credentials) flag,
  # which Debian's registration lacks. Re-register the same handler with it.
  if ! grep -q '^flags: .*C' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    python3 - <<'PY'
entry = dict(line.split(" ", 1) for line in open("/proc/sys/fs/binfmt_misc/qemu-aarch64").read().splitlines() if " " in line)
esc = lambda h: "".join("\\x" + h[i:i + 2] for i in range(0, len(h), 2))
flags = entry["flags:"].strip() + "C"
rule = ":qemu-aarch64:M:%s:%s:%s:%s:%s" % (entry["offset"], esc(entry["magic"]), esc(entry["mask"]), entry["interpreter"], flags)
open("/proc/sys/fs/binfmt_misc/qemu-aarch64", "w").write("-1")
open("/proc/sys/fs/binfmt_misc/register", "w").write(rule)
PY
  fi
}

ensure_key() {
  mkdir -p "$CACHE"
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C kiln-e2e -f "$KEY"
  chmod 600 "$KEY"
}

# Builds (once) the tarball for OS/ARCH, and the extracted copy used as the overlay's lower dir.
# The unpacked root filesystem of OS/ARCH: the containers' overlay lower dir, the VMs' source.
rootfs_dir() { printf '%s/rootfs-%s-%s-r%s' "$CACHE" "$1" "$2" "$ROOTFS_REVISION"; } # OS ARCH

ensure_rootfs() { # OS ARCH
  local os=$1 arch=$2 lower tarball
  lower=$(rootfs_dir "$1" "$2"); tarball=$lower.tar.zst
  exec 9>"$CACHE/.lock-$os-$arch"
  flock 9
  if [ ! -f "$tarball" ]; then
    [ "$arch" = amd64 ] || ensure_binfmt
    local tmp
    tmp=$(mktemp -d "$CACHE/build-$os-$arch.XXXX")
    log "Creating the $os/$arch root filesystem with debootstrap (cached in $tarball)..."
    local t0=$SECONDS
    if ! debootstrap --variant=minbase --arch="$arch" --include="$PACKAGES" "$os" "$tmp" "$MIRROR" >"$tmp.log" 2>&1; then
      tail -20 "$tmp.log" >&2
      rm -rf "$tmp"
      die "debootstrap $os/$arch failed (log: $tmp.log)"
    fi
    if ! (set -e; customize_rootfs "$tmp"); then
      rm -rf "$tmp" "$tmp.log"
      die "customizing the $os/$arch root filesystem failed"
    fi
    tar -C "$tmp" --numeric-owner --xattrs -I 'zstd -T0 -3' -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$tmp" "$tmp.log"
    log "Created $tarball in $((SECONDS - t0))s"
    prune_cache "rootfs-$os-$arch-r" "$lower"
  fi
  if [ ! -f "$lower/.complete" ]; then
    rm -rf "$lower"
    mkdir -p "$lower"
    tar -C "$lower" --numeric-owner --xattrs -I zstd -xf "$tarball"
    touch "$lower/.complete"
  fi
  flock -u 9
}

# Earlier revisions of a cached root filesystem or VM image: a new one replaces them.
prune_cache() { # PREFIX CURRENT
  local old
  for old in "$CACHE/$1"*; do
    case $old in "$2" | "$2".*) continue ;; esac
    # Not while a host still running boots from it.
    grep -qsF "lowerdir=$old," /proc/mounts && continue
    [ -e "$old" ] && rm -rf "$old"
  done
  return 0
}

customize_rootfs() { # DIR
  local r=$1
  chroot "$r" /bin/sh -ec "
    echo 'root:$ROOT_PASSWORD' | chpasswd
    useradd -m -s /bin/bash $SUDO_USER_NOPASSWD
    useradd -m -s /bin/bash $SUDO_USER_PASSWD
    echo '$SUDO_USER_PASSWD:$SUDO_USER_PASSWORD' | chpasswd
    passwd -d $SUDO_USER_NOPASSWD >/dev/null
    usermod -p '*' $SUDO_USER_NOPASSWD
  "
  printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$SUDO_USER_NOPASSWD" > "$r/etc/sudoers.d/90-$SUDO_USER_NOPASSWD"
  printf '%s ALL=(ALL) ALL\n' "$SUDO_USER_PASSWD" > "$r/etc/sudoers.d/90-$SUDO_USER_PASSWD"
  chmod 440 "$r"/etc/sudoers.d/90-*
  mkdir -p "$r/etc/ssh/sshd_config.d"
  printf 'PermitRootLogin yes\nPasswordAuthentication yes\nUseDNS no\nMaxSessions 32\n' > "$r/etc/ssh/sshd_config.d/kiln-e2e.conf"
  # Every host gets its own host keys on first boot, as real servers have.
  rm -f "$r"/etc/ssh/ssh_host_*
  mkdir -p "$r/etc/systemd/system/ssh.service.d"
  printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' > "$r/etc/systemd/system/ssh.service.d/kiln-e2e.conf"
  # debootstrap copies the build machine's hostname; each host gets its own at boot.
  rm -f "$r/etc/hostname"
  # A fresh machine-id per host (systemd makes one at boot when the file is empty).
  : > "$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id"
  # Nothing that needs the network or a real console.
  for unit in apt-daily.timer apt-daily-upgrade.timer getty@tty1.service systemd-networkd.service systemd-resolved.service; do
    ln -sf /dev/null "$r/etc/systemd/system/$unit"
  done
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
}

# --- network ---------------------------------------------------------------------------------

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/24" dev "$BRIDGE"
  fi
  # Traffic between hosts must not depend on the machine's iptables.
  ip link set dev "$BRIDGE" type bridge nf_call_iptables 0 nf_call_ip6tables 0 2>/dev/null || true
  ip link set "$BRIDGE" up
}

ensure_netns() { # NAME IP
  local name=$1 ip=$2 ns veth
  ns=$(host_ns "$name")
  veth=$(host_veth "$name")
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$GATEWAY"
  fi
}

# --- host lifecycle --------------------------------------------------------------------------

nspawn_pid() { local f; f=$(host_dir "$1")/pid; [ -f "$f" ] && cat "$f" || true; }

is_running() { local pid; pid=$(nspawn_pid "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

mount_rootfs() { # NAME OS ARCH
  local d; d=$(host_dir "$1")
  mkdir -p "$d/upper" "$d/work" "$d/merged"
  if ! mountpoint -q "$d/merged"; then
    mount -t overlay overlay -o "lowerdir=$(rootfs_dir "$2" "$3"),upperdir=$d/upper,workdir=$d/work" "$d/merged"
  fi
  printf '%s\n' "$1" > "$d/merged/etc/hostname"
  # A real server has its kernel's module directory, with modules.builtin listing what is built
  # in (kube-proxy mounts /lib/modules; kiln reads modules.builtin). These hosts share this
  # machine's kernel: its list, from the kernel's own configuration.
  write_modules_builtin "$d/merged/lib/modules/$(uname -r)"
  # A new host's /etc/hosts; a restarted one keeps its own, as a server's disk does (kiln's
  # apiserver and registry names are in it: rewritten, a powered-on master's kubelet cannot find
  # its apiserver).
  [ -e "$d/upper/etc/hosts" ] ||
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$1" > "$d/merged/etc/hosts"
  if [ "$3" != amd64 ]; then
    # qemu-user cannot emulate systemd's credential mounts; these units need none here.
    for unit in systemd-sysusers systemd-tmpfiles-setup systemd-tmpfiles-setup-dev; do
      mkdir -p "$d/merged/etc/systemd/system/$unit.service.d"
      printf '[Service]\nLoadCredential=\n' > "$d/merged/etc/systemd/system/$unit.service.d/kiln-e2e-qemu.conf"
    done
  fi
  install_keys "$d/merged"
}

# The harness's key for root and both sudo users.
install_keys() { # ROOT
  local r=$1 pub home user uid
  pub=$(cat "$KEY.pub")
  for home in root "home/$SUDO_USER_NOPASSWD" "home/$SUDO_USER_PASSWD"; do
    user=${home#home/}
    mkdir -p "$r/$home/.ssh"
    printf '%s\n' "$pub" > "$r/$home/.ssh/authorized_keys"
    chmod 700 "$r/$home/.ssh"
    chmod 600 "$r/$home/.ssh/authorized_keys"
    if [ "$user" != root ]; then
      uid=$(awk -F: -v u="$user" '$1 == u { print $3 ":" $4 }' "$r/etc/passwd")
      chown -R "$uid" "$r/$home/.ssh"
    fi
  done
}

# What a host runs as PID 1 (the harness's, not kiln's): nspawn mounts the cgroup v1 controllers
# read-only, where a real server's are writable and container runtimes create cgroups in them.
# Each controller is mounted afresh (inside the host's cgroup namespace) before systemd starts,
# as kind's node entrypoint does; then systemd takes over as PID 1.
write_init() { # DIR
  mkdir -p "$1/usr/local/sbin"
  cat > "$1/usr/local/sbin/kiln-e2e-init" <<'INIT'
#!/bin/sh
if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  mount -o remount,rw /sys/fs/cgroup
  for dir in /sys/fs/cgroup/*; do
    controller=${dir##*/}
    case $controller in unified|systemd) continue ;; esac
    grep -q "^$controller[[:space:]]" /proc/cgroups || continue
    umount -l "$dir" && mount -t cgroup -o "$controller" cgroup "$dir"
  done
fi
exec /lib/systemd/systemd "$@"
INIT
  chmod 0755 "$1/usr/local/sbin/kiln-e2e-init"
}

# The modules Kubernetes hosts use, by kernel option, as a kernel package's modules.builtin
# names them when they are built in (=y).
write_modules_builtin() { # DIR
  mkdir -p "$1"
  [ -r /proc/config.gz ] || return 0
  zcat /proc/config.gz | awk '
    BEGIN {
      path["OVERLAY_FS"] = "fs/overlayfs/overlay.ko"; path["BRIDGE"] = "net/bridge/bridge.ko"
      path["BRIDGE_NETFILTER"] = "net/bridge/br_netfilter.ko"; path["VXLAN"] = "drivers/net/vxlan/vxlan.ko"
      path["NF_CONNTRACK"] = "net/netfilter/nf_conntrack.ko"; path["NF_TABLES"] = "net/netfilter/nf_tables.ko"
      path["IP_VS"] = "net/netfilter/ipvs/ip_vs.ko"; path["IP_VS_RR"] = "net/netfilter/ipvs/ip_vs_rr.ko"
      path["IP_VS_WRR"] = "net/netfilter/ipvs/ip_vs_wrr.ko"; path["IP_VS_SH"] = "net/netfilter/ipvs/ip_vs_sh.ko"
      path["VETH"] = "drivers/net/veth.ko"; path["IP_NF_IPTABLES"] = "net/ipv4/netfilter/ip_tables.ko"
    }
    /^CONFIG_[A-Z0-9_]+=y$/ { split(substr($0, 8), kv, "="); if (kv[1] in path) print "kernel/" path[kv[1]] }
  ' | sort > "$1/modules.builtin"
}

boot() { # NAME
  local name=$1 d ns
  d=$(host_dir "$name")
  ns=$(host_ns "$name")
  write_init "$d/merged"
  # The host's root is an overlay, and containerd's overlay snapshots cannot stack on one: its
  # directory is a plain one, as on a real server's disk (kind gives its nodes a volume there).
  mkdir -p "$d/containerd"
  # Root on a real server: every capability, /proc/sys and /sys writable, the kernel log, and
  # the system calls container runtimes make (session keyrings, bpf for cgroup device filters).
  # All but CAP_SYS_TIME: the clock is this machine's, which a host's chronyd must not steer.
  # Network settings reach only the host's own network namespace; kernel-wide ones (the
  # kubelet's vm.overcommit_memory, kernel.panic) are this machine's, as kind's nodes share theirs.
  # In cgroups of its own (hosts-cgroup.sh), where nspawn roots the host's cgroup namespace.
  (
    enter_host_cgroups "$name"
    SYSTEMD_NSPAWN_API_VFS_WRITABLE=yes \
    exec setsid systemd-nspawn --quiet -D "$d/merged" --register=no --keep-unit \
      --network-namespace-path="/run/netns/$ns" --capability=all --drop-capability=CAP_SYS_TIME \
      --system-call-filter='@keyring bpf' \
      --bind=/dev/kmsg --bind="$d/containerd:/var/lib/containerd" --hostname="$name" --machine="$name" \
      --resolv-conf=off --timezone=off --link-journal=no --console=passive \
      /usr/local/sbin/kiln-e2e-init
  ) >"$d/console.log" 2>&1 </dev/null &
  echo $! > "$d/pid"
}

ssh_opts() {
  printf '%s\n' -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -o ConnectTimeout=5 -o BatchMode=yes -o ServerAliveInterval=5 -o ServerAliveCountMax=2
}

wait_ssh() { # NAME TIMEOUT
  local name=$1 timeout=$2 ip t0=$SECONDS
  ip=$(host_field "$name" ip)
  local -a opts; mapfile -t opts < <(ssh_opts)
  while (( SECONDS - t0 < timeout )); do
    if ssh "${opts[@]}" "root@$ip" true 2>/dev/null; then
      return 0
    fi
    is_running "$name" || { tail -20 "$(host_dir "$name")/console.log" >&2; die "$name stopped while booting"; }
    sleep 1
  done
  tail -20 "$(host_dir "$name")/console.log" >&2
  die "$name: no SSH after ${timeout}s"
}

# The hosts share this machine's kernel, and with it root's inotify budget: every host's systemd,
# journald, kubelet, containerd and pods take instances from one kernel-wide limit (128 by
# default), which five hosts running Kubernetes can exhaust (a rebooted host's kubelet then fails
# with "too many open files", kind's known issue). Raised while hosts are up, restored by `down`.
INOTIFY_LIMITS="fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=524288"
ensure_inotify_limits() {
  local setting key want have
  mkdir -p "$STATE"
  for setting in $INOTIFY_LIMITS; do
    key=${setting%=*} want=${setting#*=}
    have=$(sysctl -n "$key")
    (( have >= want )) && continue
    grep -qs "^$key=" "$STATE/inotify.before" || echo "$key=$have" >> "$STATE/inotify.before"
    sysctl -qw "$key=$want"
  done
}
restore_inotify_limits() {
  local setting
  [ -f "$STATE/inotify.before" ] || return 0
  while read -r setting; do [ -n "$setting" ] && sysctl -qw "$setting"; done < "$STATE/inotify.before"
  rm -f "$STATE/inotify.before"
}

# Power loss: SIGKILL the container's init; the kernel then kills everything in its PID namespace.
power_off() { # NAME
  local name=$1 pid child
  pid=$(nspawn_pid "$name")
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    for child in $(pgrep -P "$pid" || true); do kill -KILL "$child" 2>/dev/null || true; done
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$(host_dir "$name")/pid"
  remove_host_cgroups "$name"
}

# --- commands --------------------------------------------------------------------------------

cmd_up() {
  local count=3 archs=amd64 os=bookworm
  while [ $# -gt 0 ]; do
    case $1 in
      --hosts) count=$2; shift 2 ;;
      --arch) archs=$2; shift 2 ;;
      --os) os=$2; shift 2 ;;
      *) die "unknown option for up: $1" ;;
    esac
  done
  [[ $count =~ ^[0-9]+$ ]] && (( count >= 1 && count <= 40 )) || die "--hosts takes 1 to 40"
  case $os in bookworm|bullseye) ;; *) die "--os takes bookworm or bullseye" ;; esac
  IFS=, read -r -a arch_list <<< "$archs"
  for a in "${arch_list[@]}"; do case $a in amd64|arm64|arm64-vm) ;; *) die "unsupported arch \`$a\` (amd64, arm64, arm64-vm)" ;; esac; done

  local t0=$SECONDS
  ensure_key
  local -A want_arch=()
  local lines="" i name ip arch machine spec
  for ((i = 1; i <= count; i++)); do
    name=kiln-h$i
    spec=${arch_list[$(( (i - 1) % ${#arch_list[@]} ))]}
    arch=${spec%-vm}
    machine=container
    [ "$spec" = "$arch" ] || machine=vm
    ip=$NET.$((10 + i))
    want_arch[$name]=$arch
    if [ -f "$INVENTORY" ] && inventory_hosts | grep -x "$name" >/dev/null; then
      local had; had="$(host_field "$name" arch) $(host_field "$name" os) $(host_field "$name" machine)"
      [ "$had" = "$arch $os $machine" ] || die "$name exists as $had; run \`hosts.sh down\` first to change it"
    fi
    lines+="$name $ip $arch $os $machine"$'\n'
  done
  # Keep hosts beyond COUNT that are already up.
  for name in $(inventory_hosts); do
    [ -n "${want_arch[$name]:-}" ] && continue
    lines+="$name $(host_field "$name" ip) $(host_field "$name" arch) $(host_field "$name" os) $(host_field "$name" machine)"$'\n'
  done
  for spec in $(printf '%s\n' "${arch_list[@]}" | sort -u); do
    case $spec in
      *-vm) ensure_vm_image "$os" "${spec%-vm}" ;;
      *) ensure_rootfs "$os" "$spec"; [ "$spec" = amd64 ] || ensure_binfmt ;;
    esac
  done
  ensure_bridge
  ensure_inotify_limits
  write_inventory "$lines"

  local started=()
  while read -r name ip arch host_os machine; do
    [ -n "$name" ] || continue
    is_running "$name" && continue
    start_host "$name"
    started+=("$name")
  done <<< "${lines%$'\n'}"
  for name in "${started[@]}"; do wait_booted "$name"; done
  log "Up: $(inventory_hosts | wc -l) hosts (${#started[@]} booted) in $((SECONDS - t0))s; inventory: $INVENTORY"
}

cmd_status() {
  [ -f "$INVENTORY" ] || { log "no test hosts"; return 0; }
  printf '%-10s %-14s %-6s %-9s %-10s %s\n' NAME IP ARCH OS MACHINE STATE
  local name state
  for name in $(inventory_hosts); do
    if ! is_running "$name"; then
      state=stopped
    elif [ "$(cat "/sys/class/net/$(host_veth "$name")/operstate" 2>/dev/null)" != up ]; then
      state=partitioned
    else
      state=running
    fi
    printf '%-10s %-14s %-6s %-9s %-10s %s\n' "$name" "$(host_field "$name" ip)" "$(host_field "$name" arch)" "$(host_field "$name" os)" "$(host_field "$name" machine)" "$state"
  done
}

cmd_ssh() {
  local user=root
  if [ "${1:-}" = --user ]; then user=$2; shift 2; fi
  local name=${1:-}; shift || true
  [ "${1:-}" = -- ] && shift
  require_host "$name"
  local -a opts; mapfile -t opts < <(ssh_opts)
  # An emulated VM's sshd, busy running a kubelet in software, can take tens of seconds to
  # answer (ssh takes the first value given for an option).
  [ "$(host_field "$name" machine)" != vm ] || opts=(-o ConnectTimeout=90 -o ServerAliveCountMax=12 "${opts[@]}")
  exec ssh "${opts[@]}" "$user@$(host_field "$name" ip)" -- "$@"
}

cmd_stop() { require_host "$1"; power_off "$1"; log "Stopped $1 (power loss)"; }

cmd_start() {
  local name=$1; require_host "$name"
  if is_running "$name"; then log "$name is already running"; return 0; fi
  ensure_bridge
  ensure_inotify_limits
  start_host "$name"
  wait_booted "$name"
  log "Started $1"
}

# Boots a host of the inventory: a container in its network namespace, or a virtual machine.
start_host() { # NAME
  local name=$1 arch
  arch=$(host_field "$name" arch)
  if [ "$(host_field "$name" machine)" = vm ]; then
    boot_vm "$name"
    return
  fi
  [ "$arch" = amd64 ] || ensure_binfmt
  ensure_netns "$name" "$(host_field "$name" ip)"
  mount_rootfs "$name" "$(host_field "$name" os)" "$arch"
  boot "$name"
}

# Emulated hosts boot slower: an arm64 container's systemd under qemu-user, a VM's kernel too.
wait_booted() { # NAME
  if [ "$(host_field "$1" machine)" = vm ]; then wait_ssh "$1" 900
  elif [ "$(host_field "$1" arch)" = amd64 ]; then wait_ssh "$1" 120
  else wait_ssh "$1" 300
  fi
}

cmd_partition() { require_host "$1"; ip link set "$(host_veth "$1")" down; log "Partitioned $1"; }
cmd_heal() { require_host "$1"; ip link set "$(host_veth "$1")" master "$BRIDGE" up; log "Healed $1"; }

teardown_host() { # NAME
  local name=$1 d
  d=$(host_dir "$name")
  power_off "$name"
  if mountpoint -q "$d/merged" 2>/dev/null; then umount "$d/merged" 2>/dev/null || umount -l "$d/merged"; fi
  ip link del "$(host_veth "$name")" 2>/dev/null || true
  ip netns del "$(host_ns "$name")" 2>/dev/null || true
}

cmd_down() {
  local name
  for name in $(inventory_hosts); do teardown_host "$name"; done
  # Anything left from an earlier crash that carries our names: containers booted from our
  # state directory, namespaces, links.
  local pid child
  for pid in $(pgrep -f "(systemd-nspawn .*-D |qemu-system-.*file=)$STATE/hosts/" || true); do
    for child in $(pgrep -P "$pid" || true); do kill -KILL "$child" 2>/dev/null || true; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS_PREFIX-" || true); do ip netns del "$ns" || true; done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^kv-' || true); do ip link del "$link" || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  remove_host_cgroup_parent
  restore_inotify_limits
  if [ -d "$STATE" ]; then
    while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done < <(awk -v s="$STATE" '$2 ~ "^"s { print $2 }' /proc/mounts | sort -r)
    rm -rf "$STATE"
  fi
  log "Down: no test hosts left"
}

cmd_reset() {
  local names=("$@") name
  [ ${#names[@]} -gt 0 ] || mapfile -t names < <(inventory_hosts)
  for name in "${names[@]}"; do
    require_host "$name"
    power_off "$name"
    local d; d=$(host_dir "$name")
    if mountpoint -q "$d/merged"; then umount "$d/merged"; fi
    rm -rf "$d/upper" "$d/work" "$d/disk.img"
  done
  for name in "${names[@]}"; do cmd_start "$name"; done
}

main() {
  local cmd=${1:-help}; shift || true
  case $cmd in
    up) need_root; cmd_up "$@" ;;
    down) need_root; cmd_down ;;
    status) cmd_status ;;
    ssh) cmd_ssh "$@" ;;
    stop) need_root; cmd_stop "${1:?NAME}" ;;
    start) need_root; cmd_start "${1:?NAME}" ;;
    partition) need_root; cmd_partition "${1:?NAME}" ;;
    heal) need_root; cmd_heal "${1:?NAME}" ;;
    reset) need_root; cmd_reset "$@" ;;
    inventory) echo "$INVENTORY" ;;
    help|-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command \`$cmd\` (see: hosts.sh help)" ;;
  esac
}

main "$@"

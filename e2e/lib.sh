# Shared helpers for the e2e scenario scripts (sourced, not run). Expects $HOSTS (hosts.sh).

passed=0
failed=0
# check DESCRIPTION COMMAND...: runs COMMAND and counts it as passed or failed.
check() {
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); printf 'ok     %s\n' "$what"
  else failed=$((failed + 1)); printf 'FAILED %s\n' "$what"; fi
}
on() { "$HOSTS" ssh "$@"; }

# up_hosts: 2 amd64 + 1 arm64 test hosts; sets INV, KEY, H1, H2, H3.
up_hosts() {
  "$HOSTS" up --hosts 3 --arch amd64,amd64,arm64 >/dev/null || { echo "0 passed, 1 failed (hosts did not come up)"; exit 1; }
  INV=$("$HOSTS" inventory)
  KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ssh_key"])' "$INV")
  H1=$(ip_of kiln-h1); H2=$(ip_of kiln-h2); H3=$(ip_of kiln-h3)
}
ip_of() { python3 -c 'import json,sys; print([h["ip"] for h in json.load(open(sys.argv[1]))["hosts"] if h["name"]==sys.argv[2]][0])' "$INV" "$1"; }

# finish: prints the tally and exits non-zero if anything failed.
finish() {
  echo
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}

# snapshot HOST...: a hash of what `kiln delete` must restore: every path, type, mode and file
# content under /etc, /usr/bin, /usr/local/bin and /var/lib/kiln (and $SNAPSHOT_EXTRA_DIRS),
# the sysctl values (with SNAPSHOT_NET_SYSCTLS_ONLY=1 only net.*, each host's own network
# namespace: the kernel-wide ones are this machine's, shared by every host at once), the
# netfilter ruleset (nft) and the loaded kernel modules (a VM host's own).
snapshot() {
  snapshot_text "$@" | sha256sum
}

# snapshot_text HOST...: what snapshot hashes, per host, to show what differs.
snapshot_text() {
  local dirs="/etc /usr/bin /usr/local/bin /var/lib/kiln ${SNAPSHOT_EXTRA_DIRS:-}" keep=.
  [ "${SNAPSHOT_NET_SYSCTLS_ONLY:-}" = 1 ] && keep='^net\.'
  for h in "$@"; do
    echo "== $h"
    on "$h" -- "find $dirs -xdev -printf '%p %y %m\n' 2>/dev/null | sort
      find $dirs -xdev -type f -exec sha256sum {} + 2>/dev/null | sort
      sysctl -a 2>/dev/null | grep -v -e random -e ns_last_pid -e stat -e dentry -e inode-nr -e file-nr -e inode-state -e nf_conntrack_count | grep '$keep' | sort
      echo '-- netfilter'; nft list ruleset 2>&1
      echo '-- modules'; cut -d' ' -f1 /proc/modules | sort" 2>/dev/null
  done
}

# listing HOST...: like snapshot, without the sysctl values (which running services move, e.g.
# conntrack counters): what must stay the same on hosts an operation leaves alone.
listing() {
  local dirs="/etc /usr/bin /usr/local/bin /var/lib/kiln ${SNAPSHOT_EXTRA_DIRS:-}"
  for h in "$@"; do
    on "$h" -- "find $dirs -xdev -printf '%p %y %m\n' 2>/dev/null | sort
      find $dirs -xdev -type f -exec sha256sum {} + 2>/dev/null | sort" 2>/dev/null
  done | sha256sum
}

# build_demo_images KILN: fetches the demo's Debian binaries (cached) and builds the base and
# the etcd cluster images (both architectures) into $KILN_ROOT.
build_demo_images() {
  local kiln=$1 root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  "$root/kubefiles/prepare.sh" >/dev/null
  "$kiln" build -q -t kiln-demo/base:1 --build-mode lite --platform linux/amd64,linux/arm64 \
    -f "$root/kubefiles/base/Kubefile" "$root/rootfs" >/dev/null
  "$kiln" build -q -t kiln-demo/etcd:1 --platform linux/amd64,linux/arm64 \
    --image-source "$root/kubefiles/etcd/app-image.tar" "$root/kubefiles/etcd" >/dev/null
}

# demo_clusterfile FILE: the demo's 3 masters: h1 root by password, h2 root by key, h3 (arm64)
# the sudo user `ops` by key, with its sudo password.
demo_clusterfile() {
  cat > "$1" <<CF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: demo
spec:
  image: kiln-demo/etcd:1
  hosts:
    - ips: [$H1]
      roles: [master]
      ssh: {user: root, passwd: kiln-e2e-root}
    - ips: [$H2]
      roles: [master]
      ssh: {user: root, pk: $KEY}
    - ips: [$H3]
      roles: [master]
      ssh: {user: ops, pk: $KEY, passwd: kiln-e2e-ops}
CF
}

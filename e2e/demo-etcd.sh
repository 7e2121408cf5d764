#!/usr/bin/env bash
# make demo-etcd: fetch Debian's etcd, containerd, runc and registry binaries for amd64 and arm64,
# build the base and the etcd cluster images with kiln, start 3 test hosts (2 amd64 + 1 arm64),
# `kiln run` the image onto them, and show the result: a healthy 3-member etcd cluster on mixed
# architectures, its app image pulled through the in-cluster registry, and `kiln status`.
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
export KILN_ROOT=${KILN_ROOT:-$ROOT/.demo/store}
. "$ROOT/e2e/lib.sh"
mkdir -p "$ROOT/.demo"

echo "==> kubefiles/prepare.sh and kiln build: kiln-demo/base:1, kiln-demo/etcd:1 (linux/amd64 + linux/arm64)"
build_demo_images "$KILN"
"$KILN" images
echo
echo "==> test hosts: 2 amd64 + 1 arm64 (systemd, sshd, own IPs; see docs/TESTING.md)"
up_hosts
"$HOSTS" status
demo_clusterfile "$ROOT/.demo/Clusterfile"
echo
echo "==> kiln run kiln-demo/etcd:1 -f .demo/Clusterfile"
"$KILN" run -f "$ROOT/.demo/Clusterfile" --known-hosts "$ROOT/.demo/known_hosts" --accept-new-host-keys
echo
echo "==> etcdctl endpoint health --cluster (on master0)"
on kiln-h1 -- "ETCDCTL_API=3 etcdctl --endpoints http://$H1:2379 endpoint health --cluster"
echo
echo "==> each host runs its own architecture's etcd, and pulls the app image through the in-cluster registry"
for h in kiln-h1 kiln-h2 kiln-h3; do
  printf '%s: %s; ' "$h" "$(on "$h" -- 'etcd --version | grep "OS/Arch"')"
  on "$h" -- 'CONTAINERD_SNAPSHOTTER=native ctr images pull --hosts-dir /etc/containerd/certs.d docker.io/kiln-demo/hello:1 >/dev/null 2>&1 && echo "pulled docker.io/kiln-demo/hello:1 ($(uname -m))"'
done
echo
echo "==> kiln status"
"$KILN" status demo
echo
echo "Run it again (nothing is re-sent): $KILN run -f .demo/Clusterfile --known-hosts .demo/known_hosts"
echo "Remove it (hosts as before):      $KILN delete --cluster demo --known-hosts .demo/known_hosts"

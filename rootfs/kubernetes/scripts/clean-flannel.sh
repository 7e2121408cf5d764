#!/bin/bash
# Removes flannel's netfilter tables (kiln delete, after `kubeadm reset -f` stopped flanneld,
# which leaves them): its masquerade and forward rules are in tables of its own
# (kube-flannel.yml's EnableNFTables). The nft of flannel's own image runs it, since the host
# may have none; nothing to do where flannel never ran.
set -euo pipefail
command -v ctr >/dev/null 2>&1 || exit 0
image=$(ctr -n k8s.io images ls -q 2>/dev/null | grep '/flannel-io/flannel:' | head -n 1 || true)
[ -n "$image" ] || exit 0
ctr -n k8s.io containers rm kiln-flannel-cleanup >/dev/null 2>&1 || true
ctr -n k8s.io run --rm --net-host --privileged "$image" kiln-flannel-cleanup sh -c '
  for table in "ip flannel-ipv4" "ip6 flannel-ipv6"; do
    if nft list table $table >/dev/null 2>&1; then nft delete table $table; fi
  done'

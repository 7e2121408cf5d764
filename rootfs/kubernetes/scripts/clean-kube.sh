#!/bin/bash
# Undoes init-kube.sh (kiln delete, after `kubeadm reset -f`): stops the kubelet and removes
# what init-kube.sh listed as installed.
set -uo pipefail
ROOTFS=$(cd "$(dirname "$0")/.." && pwd)
LIST=$ROOTFS/.kiln-kube-installed
systemctl disable --now kubelet >/dev/null 2>&1 || true
if [ -f "$LIST" ]; then
  sort -r "$LIST" | while read -r path; do [ -n "$path" ] && rm -rf "$path"; done
  rm -f "$LIST"
fi
systemctl daemon-reload

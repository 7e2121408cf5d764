#!/bin/bash
# Undoes containerd.sh.
systemctl disable --now containerd >/dev/null 2>&1 || true
rm -f /etc/systemd/system/containerd.service
systemctl daemon-reload
rm -f /usr/local/bin/containerd /usr/local/bin/containerd-shim-runc-v2 /usr/local/bin/ctr /usr/local/bin/runc
rm -f /etc/containerd/config.toml /etc/containerd/conf.d/kiln-*.toml
rm -rf /var/lib/containerd /run/containerd
ROOTFS=$(cd "$(dirname "$0")/.." && pwd)
if [ -e "$ROOTFS/.kiln-created-etc-cni" ]; then rm -rf /etc/cni; rm -f "$ROOTFS/.kiln-created-etc-cni"; fi
if [ -e "$ROOTFS/.kiln-created-etc-containerd-conf.d" ]; then
  rmdir /etc/containerd/conf.d 2>/dev/null || true
  rm -f "$ROOTFS/.kiln-created-etc-containerd-conf.d"
fi
if [ -e "$ROOTFS/.kiln-created-etc-containerd" ]; then
  rmdir /etc/containerd 2>/dev/null || true
  rm -f "$ROOTFS/.kiln-created-etc-containerd"
fi

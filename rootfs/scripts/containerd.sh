#!/bin/bash
# Installs containerd and runc from the rootfs (kiln runs it on every host, in parallel).
set -euo pipefail
ROOTFS=$(cd "$(dirname "$0")/.." && pwd)
# containerd's CRI plugin creates /etc/cni/net.d; remember whether it was there, for uninstall.
[ -e /etc/cni ] || [ -e "$ROOTFS/.kiln-created-etc-cni" ] || touch "$ROOTFS/.kiln-created-etc-cni"
# The same for /etc/containerd (kiln makes it first when it writes registry mirrors).
[ -e /etc/containerd ] || [ -e "$ROOTFS/.kiln-created-etc-containerd" ] || touch "$ROOTFS/.kiln-created-etc-containerd"
install -m 0755 "$ROOTFS/bin/containerd" "$ROOTFS/bin/containerd-shim-runc-v2" "$ROOTFS/bin/ctr" "$ROOTFS/bin/runc" /usr/local/bin/
mkdir -p /etc/containerd
settings() { { cat /etc/containerd/config.toml /etc/containerd/conf.d/kiln-*.toml 2>/dev/null || true; } | sha256sum; }
before=$(settings)
install -m 0644 "$ROOTFS/etc/containerd/config.toml" /etc/containerd/config.toml
# Settings kiln adds for this host (etc/containerd/conf.d/*.toml in the rootfs), imported by
# config.toml: replaced as a whole, so a re-run drops what no longer applies.
rm -f /etc/containerd/conf.d/kiln-*.toml
if compgen -G "$ROOTFS/etc/containerd/conf.d/*.toml" >/dev/null; then
  [ -e /etc/containerd/conf.d ] || [ -e "$ROOTFS/.kiln-created-etc-containerd-conf.d" ] || touch "$ROOTFS/.kiln-created-etc-containerd-conf.d"
  mkdir -p /etc/containerd/conf.d
  for f in "$ROOTFS"/etc/containerd/conf.d/*.toml; do install -m 0644 "$f" "/etc/containerd/conf.d/kiln-${f##*/}"; done
fi
cat > /etc/systemd/system/containerd.service <<UNIT
[Unit]
Description=containerd (installed by kiln)
After=network.target
[Service]
ExecStart=/usr/local/bin/containerd
Restart=always
Delegate=yes
KillMode=process
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now containerd >/dev/null 2>&1
# A re-run with other settings: containerd reads them at start.
[ "$(settings)" = "$before" ] || systemctl restart containerd
for _ in $(seq 50); do /usr/local/bin/ctr version >/dev/null 2>&1 && exit 0; sleep 0.2; done
echo "containerd did not start" >&2; exit 1

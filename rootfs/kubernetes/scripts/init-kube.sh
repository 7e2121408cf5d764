#!/bin/bash
# Installs the Kubernetes node binaries and the kubelet unit from the rootfs (kiln runs it on
# every host, in parallel, in the `kube-prepare` step, after the container runtime). kubeadm
# configures and starts the kubelet later. What it installs is listed in
# $ROOTFS/.kiln-kube-installed so clean-kube.sh removes exactly that.
set -euo pipefail
ROOTFS=$(cd "$(dirname "$0")/.." && pwd)
LIST=$ROOTFS/.kiln-kube-installed
: > "$LIST.new"
# crictl and helm (helm apps are launched with it) when the image carries them.
for tool in kubeadm kubelet kubectl crictl helm ipvsadm; do
  if [ -f "$ROOTFS/bin/$tool" ]; then
    install -m 0755 "$ROOTFS/bin/$tool" "/usr/bin/$tool"
    echo "/usr/bin/$tool" >> "$LIST.new"
  elif [ "$tool" != crictl ] && [ "$tool" != helm ]; then
    echo "the image has no bin/$tool for $(uname -m)" >&2; exit 1
  fi
done
# ipvsadm's libraries and loader, where its wrapper (bin/ipvsadm) runs it from.
if [ -d "$ROOTFS/bin/ipvsadm.d" ]; then
  rm -rf /usr/lib/kiln-ipvsadm
  cp -a "$ROOTFS/bin/ipvsadm.d" /usr/lib/kiln-ipvsadm
  echo /usr/lib/kiln-ipvsadm >> "$LIST.new"
fi
# CNI plugins, when the image carries them (bin/cni/*), where containerd's CRI looks.
if [ -d "$ROOTFS/bin/cni" ]; then
  [ -e /opt/cni ] || echo /opt/cni >> "$LIST.new"
  [ -e /opt/cni/bin ] || echo /opt/cni/bin >> "$LIST.new"
  mkdir -p /opt/cni/bin
  install -m 0755 "$ROOTFS"/bin/cni/* /opt/cni/bin/
fi
install -m 0644 "$ROOTFS/etc/systemd/kubelet.service" /etc/systemd/system/kubelet.service
mkdir -p /etc/systemd/system/kubelet.service.d
install -m 0644 "$ROOTFS/etc/systemd/10-kubeadm.conf" /etc/systemd/system/kubelet.service.d/10-kubeadm.conf
printf '%s\n' /etc/systemd/system/kubelet.service /etc/systemd/system/kubelet.service.d >> "$LIST.new"
if [ -f "$ROOTFS/etc/audit-policy.yml" ]; then
  mkdir -p /etc/kubernetes
  install -m 0644 "$ROOTFS/etc/audit-policy.yml" /etc/kubernetes/audit-policy.yml
fi
# A re-run keeps what the first run recorded (it may have created /opt/cni/bin).
sort -u "$LIST.new" ${LIST:+$( [ -f "$LIST" ] && echo "$LIST")} > "$LIST.tmp" && mv "$LIST.tmp" "$LIST" && rm -f "$LIST.new"
systemctl daemon-reload
systemctl enable kubelet >/dev/null 2>&1

#!/usr/bin/env bash
# kubefiles/kubernetes/fetch.sh VERSION: downloads a Kubernetes release's node binaries for
# amd64 and arm64 into rootfs/kube-bin/<arch>/ (needs internet; run it where you build):
# kubeadm, kubelet, kubectl from dl.k8s.io (each checked against its published sha256),
# crictl and the CNI plugins from their GitHub releases, and Debian's ipvsadm; and kubeadm's
# list of control-plane images (rootfs/kube-bin/imageList).
#   CRICTL_VERSION=v1.30.1 CNI_VERSION=v1.5.1 kubefiles/kubernetes/fetch.sh v1.30.6
set -euo pipefail
VERSION=${1:?usage: fetch.sh VERSION (e.g. v1.30.6)}
CRICTL_VERSION=${CRICTL_VERSION:-v1.30.1}
CNI_VERSION=${CNI_VERSION:-v1.5.1}
MIRROR=${KILN_DEMO_MIRROR:-http://deb.debian.org/debian}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/rootfs/kube-bin
get() { curl -fsSL --retry 3 -o "$2" "$1"; }

for arch in amd64 arm64; do
  dir=$OUT/$arch
  mkdir -p "$dir/cni"
  for tool in kubeadm kubelet kubectl; do
    get "https://dl.k8s.io/release/$VERSION/bin/linux/$arch/$tool" "$dir/$tool"
    echo "$(curl -fsSL "https://dl.k8s.io/release/$VERSION/bin/linux/$arch/$tool.sha256")  $dir/$tool" | sha256sum -c --quiet
    chmod 0755 "$dir/$tool"
  done
  get "https://github.com/kubernetes-sigs/cri-tools/releases/download/$CRICTL_VERSION/crictl-$CRICTL_VERSION-linux-$arch.tar.gz" "$dir/crictl.tgz"
  tar -C "$dir" -xzf "$dir/crictl.tgz" crictl && rm "$dir/crictl.tgz"
  get "https://github.com/containernetworking/plugins/releases/download/$CNI_VERSION/cni-plugins-linux-$arch-$CNI_VERSION.tgz" "$dir/cni.tgz"
  tar -C "$dir/cni" -xzf "$dir/cni.tgz" && rm "$dir/cni.tgz"
  # ipvsadm from Debian's package for that architecture.
  pool=$(curl -fsSL "$MIRROR/dists/bookworm/main/binary-$arch/Packages.xz" | xz -dc \
    | awk '/^Package: ipvsadm$/ {p=1} p && /^Filename:/ {print $2; exit}')
  get "$MIRROR/$pool" "$dir/ipvsadm.deb"
  tmp=$(mktemp -d); dpkg-deb -x "$dir/ipvsadm.deb" "$tmp"; install -m 0755 "$tmp/sbin/ipvsadm" "$dir/ipvsadm"
  rm -rf "$tmp" "$dir/ipvsadm.deb"
done
# The control-plane images kubeadm will pull (through the in-cluster registry): the Kubefile
# copies this list to manifests/imageList, so a full build caches them in the image.
if [ "$(uname -m)" = x86_64 ]; then
  "$OUT/amd64/kubeadm" config images list --kubernetes-version "$VERSION" > "$OUT/imageList"
else
  "$OUT/arm64/kubeadm" config images list --kubernetes-version "$VERSION" > "$OUT/imageList"
fi
echo "Fetched Kubernetes $VERSION (crictl $CRICTL_VERSION, CNI plugins $CNI_VERSION) into $OUT/{amd64,arm64}"
echo "Set kubernetesVersion: $VERSION in rootfs/kubernetes/etc/kubeadm.yml if it differs."

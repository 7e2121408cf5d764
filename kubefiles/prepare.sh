#!/usr/bin/env bash
# kubefiles/prepare.sh: fetches the demo's binaries from Debian's packages for amd64 and arm64
# (etcd-server, etcd-client, containerd, runc, docker-registry, busybox-static) into
# rootfs/bin/<arch>/ and kubefiles/etcd/bin/<arch>/, and builds the demo's app container image
# (busybox httpd, both architectures) as an OCI archive. Uses a private apt state per
# architecture, so the machine's own apt configuration is left alone. Cached: a second run
# downloads nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KILN_DEMO_CACHE:-$ROOT/.cache/demo}
PACKAGES=(etcd-server etcd-client containerd runc docker-registry busybox-static)
DEBIAN_CACHE=$CACHE
# shellcheck source=debian.sh
. "$ROOT/kubefiles/debian.sh"
mkdir -p "$CACHE"

fetch() { # ARCH
  local arch=$1 debs=$CACHE/debs-$1
  if [ -f "$debs/.done" ]; then return 0; fi
  echo "Fetching ${PACKAGES[*]} for $arch..."
  debian_download "$arch" "$debs" "${PACKAGES[@]}"
  touch "$debs/.done"
}

extract() { # ARCH PACKAGE PATH-IN-PACKAGE DEST
  local tmp; tmp=$(mktemp -d)
  dpkg-deb -x "$(ls "$CACHE/debs-$1/$2"_*.deb | head -1)" "$tmp"
  install -D -m 0755 "$tmp/$3" "$4"
  rm -rf "$tmp"
}

for arch in amd64 arm64; do
  fetch "$arch"
  base=$ROOT/rootfs/bin/$arch
  etcd=$ROOT/kubefiles/etcd/bin/$arch
  extract "$arch" containerd usr/bin/containerd "$base/containerd"
  extract "$arch" containerd usr/bin/containerd-shim-runc-v2 "$base/containerd-shim-runc-v2"
  extract "$arch" containerd usr/bin/ctr "$base/ctr"
  extract "$arch" runc usr/sbin/runc "$base/runc"
  extract "$arch" docker-registry usr/bin/docker-registry "$base/registry"
  extract "$arch" etcd-server usr/bin/etcd "$etcd/etcd"
  extract "$arch" etcd-client usr/bin/etcdctl "$etcd/etcdctl"
  extract "$arch" busybox-static bin/busybox "$CACHE/busybox-$arch"
done

# The app container image: busybox httpd for both architectures, as an OCI archive that the
# demo build takes with `--image-source` (nothing is pulled from the internet).
APP=$ROOT/kubefiles/etcd/app-image.tar
if [ ! -f "$APP" ] || [ "$CACHE/busybox-amd64" -nt "$APP" ]; then
  python3 "$ROOT/kubefiles/make_app_image.py" "$APP" docker.io/kiln-demo/hello:1 \
    "amd64=$CACHE/busybox-amd64" "arm64=$CACHE/busybox-arm64"
fi
echo "Prepared: rootfs/bin/{amd64,arm64}, kubefiles/etcd/bin/{amd64,arm64}, $APP"

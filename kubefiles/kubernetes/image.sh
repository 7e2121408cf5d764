#!/usr/bin/env bash
# kubefiles/kubernetes/image.sh KILN [VERSION]: the Kubernetes cluster image kiln/kubernetes:VERSION
# (default v1.37.2) for linux/amd64 and linux/arm64, in kiln's store ($KILN_ROOT or the default):
#   1. kubefiles/prepare.sh          Debian's registry binary (the in-cluster registry)
#   2. build.sh VERSION              every binary from pinned sources (cached outside the tree)
#   3. one `kiln build` per image kubeadm deploys (its own `config images list`) and flannel's,
#      multi-arch, under exactly the names kubeadm and the manifest use
#   4. `kiln build` of the cluster image, its registry filled from kiln's store
# Container images and the cluster image carry SOURCE_DATE_EPOCH = the Kubernetes module's
# publication time, so a rebuild of the same sources gives the same image digests.
set -euo pipefail
KILN=$(realpath "${1:?usage: image.sh KILN [VERSION]}")
VERSION=${2:-${KUBE_VERSION:-v1.37.2}}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PLATFORMS=linux/amd64,linux/arm64
TAG=${KUBE_IMAGE_TAG:-kiln/kubernetes:$VERSION}
STARTED=$(date +%s)

"$ROOT/kubefiles/prepare.sh" >/dev/null
KUBE_ARCHES="amd64 arm64" "$HERE/build.sh" "$VERSION"
BIN=$ROOT/rootfs/kube-bin/$VERSION
# shellcheck disable=SC1091
. "$BIN/versions.env"
info=$(cd "$HERE/go/kubernetes-$KUBERNETES" && go mod download -json "k8s.io/kubernetes@$KUBERNETES" |
  sed -n 's/.*"Info": "\(.*\)".*/\1/p')
SOURCE_DATE_EPOCH=$(date -d "$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")" +%s)
export SOURCE_DATE_EPOCH

# Each image kubeadm lists, and flannel's, from the Kubefile named after its repository.
images=$(cat "$BIN/imageList"; sed -n 's/^ *image: *//p' "$ROOT/rootfs/kubernetes/manifests/kube-flannel.yml" | sort -u)
total=$(wc -l <<< "$images")
n=0
for image in $images; do
  n=$((n + 1))
  repo=${image%:*}
  kubefile=$HERE/images/${repo##*/}.Kubefile
  [ -f "$kubefile" ] || { echo "error: no Kubefile for $image (expected $kubefile)" >&2; exit 1; }
  echo "[$n/$total] container image $image ($PLATFORMS)"
  "$KILN" build --quiet --build-mode lite --platform "$PLATFORMS" -t "$image" -f "$kubefile" "$BIN/images"
done

build_args=()
while IFS='=' read -r key value; do build_args+=(--build-arg "$key=$value"); done < "$BIN/versions.env"
echo "cluster image $TAG ($PLATFORMS)"
"$KILN" build --quiet --platform "$PLATFORMS" -t "$TAG" --image-source store \
  --build-arg "KUBE_BIN=kube-bin/$VERSION" "${build_args[@]}" -f "$HERE/Kubefile" "$ROOT/rootfs"
echo "Built $TAG in $(( $(date +%s) - STARTED )) s"

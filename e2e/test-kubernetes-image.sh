#!/usr/bin/env bash
# e2e/test-kubernetes-image.sh KILN: checks the Kubernetes cluster image that
# `make kubernetes-image` built into kiln's store (KILN_ROOT or the default), taking every file
# from the image itself, not from the build directory:
#   - `kiln inspect` lists linux/amd64 and linux/arm64 and every component's version;
#   - every binary of each architecture (node binaries and those in the container images) is an
#     ELF file for its architecture, statically linked, and reports its version (arm64 ones run
#     under qemu-user);
#   - the image's registry holds exactly what `kubeadm config images list` (the image's own
#     kubeadm) names, plus flannel's and haproxy's images, each an index of both platforms whose configs name
#     their architecture;
#   - on this machine, the image's own containerd and runc pull pause and etcd from that registry
#     (`kiln registry serve`), run pause, and etcd answers `etcdctl endpoint health`.
set -uo pipefail
KILN=$(realpath "${1:?usage: test-kubernetes-image.sh KILN}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${KUBE_VERSION:-v1.37.2}
TAG=${KUBE_IMAGE_TAG:-kiln/kubernetes:$VERSION}
# shellcheck source=lib.sh
. "$ROOT/e2e/lib.sh"
# shellcheck disable=SC1090
. "$ROOT/rootfs/kube-bin/$VERSION/versions.env"
STORE=${KILN_ROOT:-/var/lib/kiln}/oci
WORK=$(mktemp -d /var/tmp/kiln-kube-image.XXXX)
PORT=5391
pids=()
cleanup() {
  [ -S "$WORK/containerd.sock" ] && for c in pause-test etcd-test; do
    ctrd task kill -s KILL "$c" >/dev/null 2>&1; sleep 0.5; ctrd task delete "$c" >/dev/null 2>&1
    ctrd container rm "$c" >/dev/null 2>&1
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  umount -R "$WORK/containerd" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# unpack IMAGE ARCH DIR: every layer of the image's ARCH variant but its registry content.
unpack() {
  local manifest layer
  manifest=$("$KILN" inspect --platform "linux/$2" "$1" | jq -c '.platforms[0].manifest') || return 1
  mkdir -p "$3"
  for layer in $(jq -r '.layers[] | select((.annotations // {})["io.kiln.layer.content"] != "registry") | .digest' <<< "$manifest"); do
    tar -C "$3" -xf "$STORE/blobs/sha256/${layer#sha256:}" || return 1
  done
}
# run_as ARCH BINARY ARGS...: runs a binary of that architecture (arm64 under qemu-user).
run_as() {
  local arch=$1
  shift
  if [ "$arch" = arm64 ]; then qemu-aarch64-static "$@"; else "$@"; fi
}
# in_root ARCH DIR PROGRAM ARGS...: runs a dynamically linked program of an image's rootfs
# against that rootfs' own libraries.
in_root() {
  local arch=$1 dir=$2 program=$3
  shift 3
  if [ "$arch" = arm64 ]; then qemu-aarch64-static -L "$dir" "$dir$program" "$@"; else chroot "$dir" "$program" "$@"; fi
}
export -f in_root
# reports ARCH EXPECTED BINARY ARGS...: the binary's output contains EXPECTED.
reports() {
  local arch=$1 expected=$2 out
  shift 2
  out=$(run_as "$arch" "$@" 2>&1)
  grep -qF -- "$expected" <<< "$out" || { echo "    $*: expected '$expected', got: $(head -3 <<< "$out")"; return 1; }
}
# elf_for ARCH FILE: `file` says it is a static executable for ARCH.
elf_for() {
  local want out
  case $1 in amd64) want=x86-64 ;; arm64) want=aarch64 ;; esac
  out=$(file -bL "$2")
  grep -q "ELF 64-bit LSB .*$want" <<< "$out" && grep -q "statically linked" <<< "$out" ||
    { echo "    $2: $out"; return 1; }
}

echo "== kiln inspect $TAG"
check "the image is in kiln's store ($STORE)" bash -c "\"\$0\" inspect \"\$1\" >/dev/null" "$KILN" "$TAG"
platforms=$("$KILN" inspect "$TAG" | jq -r '[.platforms[].platform] | sort | join(",")')
check "it has linux/amd64 and linux/arm64 (has: $platforms)" test "$platforms" = "linux/amd64,linux/arm64"
for platform in linux/amd64 linux/arm64; do
  components=$("$KILN" inspect --platform "$platform" "$TAG" | jq -c '.platforms[0].components')
  want=$(sed 's/^\([A-Z_]*\)=\(.*\)$/\1 \2/' "$ROOT/rootfs/kube-bin/$VERSION/versions.env" |
    awk '{k=tolower($1); gsub("_","-",k); printf "%s\"%s\":\"%s\"", (NR>1?",":"{"), k, $2} END {print "}"}')
  check "$platform lists every component's version: $components" \
    test "$(jq -S . <<< "$components")" = "$(jq -S . <<< "$want")"
done

echo "== binaries, per architecture"
for arch in amd64 arm64; do
  check "unpack the $arch rootfs" unpack "$TAG" "$arch" "$WORK/$arch"
  bin=$WORK/$arch/bin
  for tool in kubeadm kubelet kubectl crictl containerd containerd-shim-runc-v2 ctr runc helm \
    cni/bridge cni/host-local cni/loopback cni/portmap cni/flannel; do
    check "$arch $tool: static ELF for $arch" elf_for "$arch" "$bin/$tool"
  done
  check "$arch ipvsadm (Debian's) is an ELF for $arch beside its libraries and loader" bash -c "
    file -b '$bin/ipvsadm.d/sbin/ipvsadm' | grep -q '$( [ "$arch" = amd64 ] && echo x86-64 || echo aarch64)'"
  # It asks the kernel for IPVS first: this machine's has none (the arm64 VM's test does).
  check "$arch ipvsadm runs on nothing but its own libraries (as far as the kernel's IPVS)" bash -c "
    in_root $arch '$bin/ipvsadm.d' /sbin/ipvsadm --version 2>&1 | grep -q '^ipvsadm v1\.\|^Can.t initialize ipvs'"
  check "$arch bin/ipvsadm runs it with that loader from where init-kube.sh installs it" \
    grep -q '^exec /usr/lib/kiln-ipvsadm/lib.*/ld-linux-[a-z0-9_-]*\.so\.[12] --library-path /usr/lib/kiln-ipvsadm/.* /usr/lib/kiln-ipvsadm/sbin/ipvsadm "\$@"$' "$bin/ipvsadm"
  check "$arch kubeadm version -o short = $KUBERNETES" reports "$arch" "$KUBERNETES" "$bin/kubeadm" version -o short
  check "$arch kubeadm reports GitTreeState archive, build date of the module" reports "$arch" 'GitTreeState:"archive"' "$bin/kubeadm" version
  check "$arch kubelet --version" reports "$arch" "Kubernetes $KUBERNETES" "$bin/kubelet" --version
  check "$arch kubectl version --client" reports "$arch" "Client Version: $KUBERNETES" "$bin/kubectl" version --client
  check "$arch crictl --version" reports "$arch" "crictl version $CRICTL" "$bin/crictl" --version
  check "$arch containerd --version" reports "$arch" "containerd github.com/containerd/containerd/v2 $CONTAINERD" "$bin/containerd" --version
  check "$arch ctr --version" reports "$arch" "ctr github.com/containerd/containerd/v2 $CONTAINERD" "$bin/ctr" --version
  check "$arch containerd-shim-runc-v2 -v" reports "$arch" "$CONTAINERD" "$bin/containerd-shim-runc-v2" -v
  check "$arch runc --version (with libseccomp)" reports "$arch" "runc version ${RUNC#v}" "$bin/runc" --version
  check "$arch runc links libseccomp" reports "$arch" "libseccomp: 2." "$bin/runc" --version
  check "$arch helm version" reports "$arch" "$HELM" "$bin/helm" version --short
  check "$arch CNI bridge plugin" reports "$arch" "CNI bridge plugin $CNI_PLUGINS" "$bin/cni/bridge" --version
  check "$arch CNI flannel plugin" reports "$arch" "CNI flannel plugin $CNI_FLANNEL" "$bin/cni/flannel" --version
done

echo "== container images"
LIST=$("$WORK/amd64/bin/kubeadm" config images list --kubernetes-version "$VERSION")
FLANNEL_IMAGE=ghcr.io/flannel-io/flannel:$FLANNEL
HAPROXY_IMAGE=kiln.local/haproxy:$HAPROXY
declare -A version_of=(
  [kube-apiserver]="Kubernetes $KUBERNETES" [kube-controller-manager]="Kubernetes $KUBERNETES"
  [kube-scheduler]="Kubernetes $KUBERNETES" [kube-proxy]="Kubernetes $KUBERNETES"
  [etcd]="etcd Version: ${ETCD#v}" [coredns]="CoreDNS-${COREDNS#v}" [pause]="pause.c v$PAUSE" [flannel]="$FLANNEL")
declare -A command_of=(
  [kube-apiserver]="usr/local/bin/kube-apiserver --version" [kube-controller-manager]="usr/local/bin/kube-controller-manager --version"
  [kube-scheduler]="usr/local/bin/kube-scheduler --version" [kube-proxy]="usr/local/bin/kube-proxy --version"
  [etcd]="usr/local/bin/etcd --version" [coredns]="coredns -version" [pause]="pause -v" [flannel]="opt/bin/flanneld --version")
for image in $LIST $FLANNEL_IMAGE; do
  repo=${image%:*}
  name=${repo##*/}
  for arch in amd64 arm64; do
    dir=$WORK/images/$name-$arch
    check "$image $arch: unpacked from kiln's store" unpack "$image" "$arch" "$dir"
    read -r file args <<< "${command_of[$name]}"
    check "$image $arch: /$file is a static ELF for $arch" elf_for "$arch" "$dir/$file"
    # shellcheck disable=SC2086
    check "$image $arch: /$file reports ${version_of[$name]}" reports "$arch" "${version_of[$name]}" "$dir/$file" $args
  done
done
for arch in amd64 arm64; do
  dir=$WORK/images/etcd-$arch
  check "etcd image $arch: etcdctl version ${ETCD#v}" reports "$arch" "etcdctl version: ${ETCD#v}" "$dir/usr/local/bin/etcdctl" version
  check "etcd image $arch: etcdutl version ${ETCD#v}" reports "$arch" "etcdutl version: ${ETCD#v}" "$dir/usr/local/bin/etcdutl" version
  dir=$WORK/images/kube-proxy-$arch
  check "kube-proxy image $arch: its iptables-restore (nft) runs on its own libraries" \
    reports amd64 "nf_tables" in_root "$arch" "$dir" /usr/sbin/iptables-restore --version
  # nft opens a netfilter netlink socket even for --version, which qemu-user cannot emulate.
  [ "$arch" = amd64 ] && check "kube-proxy image $arch: its nft runs" reports amd64 "nftables v" in_root "$arch" "$dir" /usr/sbin/nft --version
  dir=$WORK/images/flannel-$arch
  check "flannel image $arch: its busybox cp and iptables run" \
    bash -c "in_root $arch '$dir' /bin/cp --help 2>&1 | grep -q BusyBox && in_root $arch '$dir' /usr/sbin/iptables-restore --version | grep -q nf_tables"
  # The workers' apiserver balancer (no IPVS): Debian's haproxy on the libraries beside it.
  dir=$WORK/images/haproxy-$arch
  check "$HAPROXY_IMAGE $arch: unpacked from kiln's store" unpack "$HAPROXY_IMAGE" "$arch" "$dir"
  check "haproxy image $arch: haproxy -v runs on its own libraries" \
    bash -c "in_root $arch '$dir' /usr/sbin/haproxy -v | grep -q 'HAProxy version ${HAPROXY%%-*}'"
done

echo "== the cluster image's registry (kiln registry serve --image $TAG)"
"$KILN" registry serve --image "$TAG" --listen "127.0.0.1:$PORT" > "$WORK/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.2; done
registry_has() { # IMAGE: an index of amd64 and arm64 whose configs name their architecture
  local image=$1 repo tag index arch child config
  repo=${image%:*} tag=${image##*:}
  index=$(curl -sf -H 'Accept: application/vnd.oci.image.index.v1+json' "http://127.0.0.1:$PORT/v2/$repo/manifests/$tag") ||
    { echo "    $image: not served"; return 1; }
  [ "$(jq -r '[.manifests[].platform.architecture] | sort | join(",")' <<< "$index")" = amd64,arm64 ] ||
    { echo "    $image: $(jq -c '[.mediaType, [.manifests[]?.platform]]' <<< "$index")"; return 1; }
  for arch in amd64 arm64; do
    child=$(jq -r --arg a "$arch" '.manifests[] | select(.platform.architecture == $a) | .digest' <<< "$index")
    config=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$PORT/v2/$repo/manifests/$child" | jq -r .config.digest)
    [ "$(curl -sf "http://127.0.0.1:$PORT/v2/$repo/blobs/$config" | jq -r '.os + "/" + .architecture')" = "linux/$arch" ] ||
      { echo "    $image: the $arch manifest's config does not say linux/$arch"; return 1; }
  done
}
for image in $LIST $FLANNEL_IMAGE $HAPROXY_IMAGE; do
  check "registry has $image: index of amd64+arm64, configs name their architecture" registry_has "$image"
done
catalog=$(curl -sf "http://127.0.0.1:$PORT/v2/_catalog" | jq -r '.repositories[]' | sort | tr '\n' ' ')
want=$(for image in $LIST $FLANNEL_IMAGE $HAPROXY_IMAGE; do echo "${image%:*}"; done | sort | tr '\n' ' ')
check "the registry holds nothing else (catalog: $catalog)" test "$catalog" = "$want"

echo "== pause and etcd under the image's containerd $CONTAINERD and runc $RUNC (this machine, amd64)"
mkdir -p "$WORK/containerd"
cat > "$WORK/containerd.toml" <<EOF
version = 3
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$WORK/containerd.sock"
[ttrpc]
  address = "$WORK/containerd.sock.ttrpc"
[plugins."io.containerd.transfer.v1.local"]
  config_path = "$WORK/certs.d"
EOF
mkdir -p "$WORK/certs.d/127.0.0.1:$PORT"
printf 'server = "http://127.0.0.1:%s"\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n' "$PORT" "$PORT" \
  > "$WORK/certs.d/127.0.0.1:$PORT/hosts.toml"
PATH=$WORK/amd64/bin:$PATH "$WORK/amd64/bin/containerd" --config "$WORK/containerd.toml" > "$WORK/containerd.log" 2>&1 &
pids+=($!)
ctrd() { PATH=$WORK/amd64/bin:$PATH "$WORK/amd64/bin/ctr" --address "$WORK/containerd.sock" "$@"; }
for _ in $(seq 100); do ctrd version >/dev/null 2>&1 && break; sleep 0.2; done
check "the image's containerd serves" ctrd version
pull() { ctrd images pull --plain-http --platform linux/amd64 "127.0.0.1:$PORT/$1" > "$WORK/pull.log" 2>&1 || { tail -3 "$WORK/pull.log"; return 1; }; }
PAUSE_IMAGE=$(grep /pause: <<< "$LIST")
ETCD_IMAGE=$(grep /etcd: <<< "$LIST")
check "ctr pulls $PAUSE_IMAGE from the image's registry" pull "$PAUSE_IMAGE"
check "ctr pulls $ETCD_IMAGE from the image's registry" pull "$ETCD_IMAGE"
check "ctr run pause" ctrd run -d "127.0.0.1:$PORT/$PAUSE_IMAGE" pause-test
sleep 1
check "pause is running as 65535" bash -c "[ \"\$(PATH=$WORK/amd64/bin:\$PATH $WORK/amd64/bin/ctr --address $WORK/containerd.sock task ls | awk '\$1==\"pause-test\" {print \$3}')\" = RUNNING ] &&
  [ \"\$(stat -c %u /proc/\$(PATH=$WORK/amd64/bin:\$PATH $WORK/amd64/bin/ctr --address $WORK/containerd.sock task ls | awk '\$1==\"pause-test\" {print \$2}'))\" = 65535 ]"
check "ctr run etcd" ctrd run -d --net-host "127.0.0.1:$PORT/$ETCD_IMAGE" etcd-test etcd --name default \
  --data-dir /var/lib/etcd --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster default=http://127.0.0.1:23800
healthy() {
  local i
  for i in $(seq 30); do
    ctrd task exec --exec-id "health-$i" etcd-test etcdctl --endpoints http://127.0.0.1:23790 endpoint health 2>&1 |
      grep -q "is healthy" && return 0
    sleep 1
  done
  return 1
}
check "etcdctl endpoint health (the image's etcdctl, in the container)" healthy

finish

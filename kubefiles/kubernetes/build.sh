#!/usr/bin/env bash
# kubefiles/kubernetes/build.sh [VERSION]: builds every binary of the Kubernetes cluster image
# from pinned sources, for each architecture, into rootfs/kube-bin/VERSION/:
#   node/<arch>/            what every host runs: kubeadm, kubelet, kubectl, crictl, containerd,
#                           containerd-shim-runc-v2, ctr, runc, helm, ipvsadm, cni/<plugins>
#   images/<arch>/          what the container images hold: kube-apiserver, kube-controller-manager,
#                           kube-scheduler, kube-proxy, etcd, etcdctl, etcdutl, coredns, flanneld, pause
#   images/userspace/<arch> Debian's iptables/nftables and busybox for kube-proxy and flannel
#   images/haproxy/<arch>   Debian's haproxy and the libraries it loads (the workers' apiserver
#                           balancer where the kernel has no IPVS)
#   versions.env            every component's version (the Kubefile's labels)
#   etc/kubeadm.yml         rootfs/kubernetes/etc/kubeadm.yml with this kubernetesVersion
#   etc/containerd/config.toml  rootfs/kubernetes/etc/containerd/config.toml with this pause tag
#   imageList               `kubeadm config images list` of this kubeadm, and the haproxy image
# Go components build from the wrapper modules in go/<component>-<version>/ (versions/VERSION
# names them); pause from Kubernetes' own pause.c. Each result is cached under
# $KILN_BUILD_CACHE (/var/cache/kiln-build), keyed by component, version, architecture, the
# wrapper's go.mod/go.sum, the component's build description and the Go version, so only what
# changed is built again. Go's own caches (GOMODCACHE, GOCACHE) stay where Go keeps them.
#   KUBE_ARCHES="amd64 arm64" kubefiles/kubernetes/build.sh v1.37.2
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=components.sh
. "$HERE/components.sh"
VERSION=${1:-${KUBE_VERSION:-v1.37.2}}
ARCHES=${KUBE_ARCHES:-amd64 arm64}
CACHE=${KILN_BUILD_CACHE:-/var/cache/kiln-build}
OUT=${KUBE_OUT:-$ROOT/rootfs/kube-bin/$VERSION}
DEBIAN_CACHE=$CACHE/debian
# shellcheck source=../debian.sh
. "$HERE/../debian.sh"

[ -f "$HERE/versions/$VERSION" ] || {
  echo "error: no component list for Kubernetes $VERSION (kubefiles/kubernetes/versions/$VERSION)" >&2
  echo "hint: copy versions/$(ls "$HERE/versions" | tail -1) to versions/$VERSION, set its versions, and run" >&2
  echo "      new-wrapper.sh for each new one (known: $(ls "$HERE/versions" | tr '\n' ' '))" >&2
  exit 1
}
# shellcheck disable=SC1090
. "$HERE/versions/$VERSION"
COMPONENTS=(kubernetes:$KUBERNETES etcd:$ETCD coredns:$COREDNS containerd:$CONTAINERD runc:$RUNC
  cni-plugins:$CNI_PLUGINS cni-flannel:$CNI_FLANNEL flannel:$FLANNEL crictl:$CRICTL helm:$HELM)
read -ra ARCH_LIST <<< "$ARCHES"
STEPS=$(( (${#COMPONENTS[@]} + 4) * ${#ARCH_LIST[@]} ))
STEP=0
STARTED=$(date +%s)

elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
step() { STEP=$((STEP + 1)); printf '[%2d/%d] %-13s %-9s linux/%-5s %s\n' "$STEP" "$STEPS" "$1" "$2" "$3" "$4"; }
die() { echo "error: $*" >&2; exit 1; }

# The module's publication time (the proxy's .info): the build date stamped into binaries.
module_time() { # MODULE VERSION (run in the wrapper)
  local info
  info=$(go mod download -json "$1@$2" | sed -n 's/.*"Info": "\(.*\)".*/\1/p')
  sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info"
}

# cgo's view of an architecture's C libraries (Debian's, e.g. libseccomp for static runc).
cgo_sysroot() { # ARCH PACKAGE... -> prints the sysroot
  local arch=$1 root
  shift
  root=$CACHE/sysroot/$arch-$(echo "$*" | sha256sum | cut -c1-8)
  if [ ! -f "$root/.done" ]; then
    rm -rf "$root" "$root.debs"
    debian_download "$arch" "$root.debs" "$@" >&2
    debian_extract "$root.debs"/*.deb "$root"
    rm -rf "$root.debs"
    touch "$root/.done"
  fi
  echo "$root"
}

triplet() { case $1 in amd64) echo x86_64-linux-gnu ;; arm64) echo aarch64-linux-gnu ;; *) die "unsupported arch $1" ;; esac; }

# Builds one package with `go build -v`, printing how many packages are compiled every 20 s
# (the Kubernetes binaries compile ~2,500 packages per architecture when nothing is cached).
go_build() { # LABEL OUTPUT PACKAGE (env and flags from the caller)
  local label=$1 out=$2 pkg=$3 log=$2.log started now last total count=0
  started=$(date +%s); last=$started
  total=$(go list "${GO_FLAGS[@]}" -deps "$pkg" 2>/dev/null | wc -l)
  if ! go build -v "${GO_FLAGS[@]}" -o "$out" "$pkg" > "$log" 2>&1; then
    tail -40 "$log" >&2
    die "$label: go build $pkg failed (log: $log)"
  fi &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    now=$(date +%s)
    if (( now - last >= 20 )); then
      count=$(grep -cv '^#\|: ' "$log" 2>/dev/null || true)
      printf '        %s: %s, %d of at most %d packages compiled (%s)\n' "$label" "${out##*/}" "$count" "$total" "$(elapsed "$started")"
      last=$now
    fi
  done
  wait "$pid"
  rm -f "$log"
}

build_component() { # NAME VERSION ARCH
  local name=$1 version=$2 arch=$3 wrapper=$HERE/go/$1-$2 key dir tmp started entry src modfile
  [ -f "$wrapper/go.mod" ] || die "$name $version: no wrapper module $wrapper (run kubefiles/kubernetes/new-wrapper.sh $name $version)"
  MODULE_TIME=""
  component "$name" "$version"
  MODULE_TIME=$(cd "$wrapper" && module_time "$MODULE" "$version")
  component "$name" "$version"
  local sysroot=""
  if [ -n "$SYSROOT_PACKAGES" ]; then
    # shellcheck disable=SC2086
    sysroot=$(cgo_sysroot "$arch" $SYSROOT_PACKAGES)
  fi
  key=$( {
    declare -f "component_${name//-/_}"
    cat "$wrapper/go.mod" "$wrapper/go.sum"
    go version
    echo "$arch $MODULE_TIME"
    if [ -n "$sysroot" ]; then ls "$sysroot"/usr/share/doc; fi
    if [ -n "$PATCH" ]; then declare -f "$PATCH"; fi
  } | sha256sum | cut -c1-16)
  dir=$CACHE/bin/$name-$version/$arch-$key
  BUILT["$name $arch"]=$dir
  if [ -f "$dir/.done" ]; then
    step "$name" "$version" "$arch" "cached ($dir)"
    return
  fi
  step "$name" "$version" "$arch" "building $(for entry in $PACKAGES; do printf '%s ' "${entry%%=*}"; done)"
  started=$(date +%s)
  tmp=$dir.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  GO_FLAGS=(-trimpath -ldflags "-s -w $LDFLAGS")
  [ -n "$TAGS" ] && GO_FLAGS+=(-tags "$TAGS")
  if [ -n "$PATCH" ]; then
    # A source change upstream's module needs here (see components.sh): a patched copy of the
    # module, verified against go.sum before it is copied, replaces it through a temporary go.mod.
    src=$CACHE/src/$name-$version-$key
    if [ ! -f "$src/.done" ]; then
      rm -rf "$src"
      mkdir -p "${src%/*}"
      cp -r "$(cd "$wrapper" && go mod download -json "$MODULE@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')" "$src"
      chmod -R u+w "$src"
      (cd "$src" && "$PATCH")
      touch "$src/.done"
    fi
    modfile=$tmp/wrapper.mod
    cp "$wrapper/go.mod" "$modfile"
    cp "$wrapper/go.sum" "${modfile%.mod}.sum"
    printf '\nreplace %s => %s\n' "$MODULE" "$src" >> "$modfile"
    GO_FLAGS+=(-modfile "$modfile")
  fi
  (
    cd "$wrapper"
    export GOOS=linux GOARCH=$arch CGO_ENABLED=$CGO GOFLAGS=-buildvcs=false
    if [ "$CGO" = 1 ]; then
      CC="$(triplet "$arch")-gcc"
      [ "$arch" = "$(dpkg --print-architecture)" ] && CC=gcc
      export CC
    fi
    if [ -n "$sysroot" ]; then
      export PKG_CONFIG_SYSROOT_DIR=$sysroot PKG_CONFIG_LIBDIR=$sysroot/usr/lib/$(triplet "$arch")/pkgconfig
      export CGO_CFLAGS="-I$sysroot/usr/include" CGO_LDFLAGS="-L$sysroot/usr/lib/$(triplet "$arch")"
    fi
    for entry in $PACKAGES; do go_build "$name $arch" "$tmp/${entry%%=*}" "${entry#*=}"; done
  )
  rm -f "$tmp"/wrapper.*
  touch "$tmp/.done"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "        built in $(elapsed "$started")"
}

# Kubernetes' pause: its own static C program, compiled as build/pause/Makefile does.
build_pause() { # ARCH
  local arch=$1 src dir key cc
  src=$(cd "$HERE/go/kubernetes-$KUBERNETES" && go mod download -json "k8s.io/kubernetes@$KUBERNETES" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c
  cc=$(triplet "$arch")-gcc
  [ "$arch" = amd64 ] && [ "$(uname -m)" = x86_64 ] && cc=gcc
  command -v "$cc" >/dev/null || die "pause for $arch needs $cc (Debian: gcc-aarch64-linux-gnu)"
  key=$( { cat "$src"; "$cc" --version | head -1; echo "$PAUSE"; } | sha256sum | cut -c1-16)
  dir=$CACHE/bin/pause-$PAUSE/$arch-$key
  BUILT["pause $arch"]=$dir
  if [ -f "$dir/.done" ]; then
    step pause "$PAUSE" "$arch" "cached ($dir)"
    return
  fi
  step pause "$PAUSE" "$arch" "compiling pause.c with $cc"
  mkdir -p "$dir"
  "$cc" -Os -Wall -Werror -static -DVERSION="v$PAUSE-0" -o "$dir/pause" "$src"
  "$(triplet "$arch")-strip" "$dir/pause" 2>/dev/null || strip "$dir/pause"
  touch "$dir/.done"
}

# Debian's userspace for the images that exec iptables or cp (kube-proxy, flannel).
build_userspace() { # ARCH
  local arch=$1 dir=$CACHE/userspace/$1 tool
  if [ -f "$dir/.done" ]; then
    step userspace bookworm "$arch" "cached ($dir)"
    return
  fi
  step userspace bookworm "$arch" "iptables, nftables, busybox from Debian"
  rm -rf "$dir" "$dir.debs"
  debian_closure "$arch" "$dir.debs" iptables nftables busybox-static
  debian_extract "$dir.debs"/*.deb "$dir/root"
  rm -rf "$dir/root/usr/share/"{doc,man,info,lintian,locale,bug} "$dir/root/etc/"{init.d,default,logrotate.d}
  # What update-alternatives would do: the nft backend, as Debian 12's own default.
  for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "$dir/root/usr/sbin/$tool"
  done
  for tool in cp sh mkdir cat ls; do ln -sf busybox "$dir/root/bin/$tool"; done
  rm -rf "$dir.debs"
  touch "$dir/.done"
}

# Debian's PACKAGE for ARCH: FILE (a path in the package) with the shared libraries it loads and
# its loader under <dir>/root, each where the loader looks. Cached by Debian version; prints the
# directory (and sets BUNDLE_VERSION).
debian_bundle() { # PACKAGE ARCH FILE
  local package=$1 arch=$2 file=$3 dir
  BUNDLE_VERSION=$(debian_version "$arch" "$package")
  [ -n "$BUNDLE_VERSION" ] || die "Debian has no $package for $arch"
  dir=$CACHE/$package/$BUNDLE_VERSION/$arch
  BUILT["$package $arch"]=$dir
  if [ -f "$dir/.done" ]; then
    step "$package" "${BUNDLE_VERSION%%-*}" "$arch" "cached ($dir)"
    return
  fi
  step "$package" "${BUNDLE_VERSION%%-*}" "$arch" "Debian's $package, the libraries it loads and its loader"
  rm -rf "$dir" "$dir.debs" "$dir.all"
  debian_closure "$arch" "$dir.debs" "$package=$BUNDLE_VERSION"
  debian_extract "$dir.debs"/*.deb "$dir.all"
  elf_closure "$dir.all" "$dir/root" "$file"
  rm -rf "$dir.debs" "$dir.all"
  touch "$dir/.done"
}

# haproxy: the workers' apiserver balancer where the kernel has no IPVS (kiln runs it as a
# static pod on these libraries).
build_haproxy() { # ARCH
  debian_bundle haproxy "$1" usr/sbin/haproxy
  HAPROXY_TAG=${BUNDLE_VERSION//+/_}
}

# Where init-kube.sh installs ipvsadm's libraries and loader on a host.
IPVSADM_HOME=/usr/lib/kiln-ipvsadm

# ipvsadm for the hosts (the workers' IPVS virtual server where the kernel has IP_VS), and a
# wrapper `ipvsadm` that runs it on its own libraries (libnl, popt, the C library) and loader
# from $IPVSADM_HOME: a host needs neither libnl nor popt, nor this C library.
build_ipvsadm() { # ARCH
  local dir interp libdirs
  debian_bundle ipvsadm "$1" sbin/ipvsadm
  dir=$(built ipvsadm "$1")
  interp=$(readelf -l "$dir/root/sbin/ipvsadm" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  [ -n "$interp" ] || die "ipvsadm for $1 names no program interpreter"
  libdirs=$(cd "$dir/root" && find . -name '*.so*' ! -path ".$interp" -printf "$IPVSADM_HOME/%h\n" | sed 's#/\./#/#' | sort -u | paste -sd:)
  cat > "$dir/ipvsadm" <<WRAPPER
#!/bin/sh
# Debian's ipvsadm on the libraries and loader it was built with (kiln's Kubernetes image).
exec $IPVSADM_HOME$interp --library-path $libdirs $IPVSADM_HOME/sbin/ipvsadm "\$@"
WRAPPER
  chmod 0755 "$dir/ipvsadm"
}

# A path inside ROOT with its symbolic links followed inside ROOT (absolute ones too).
resolve_in() { # ROOT PATH
  local root=$1 path=$2 target hops=0
  while [ -L "$root/$path" ] && [ $hops -lt 40 ]; do
    target=$(readlink "$root/$path")
    case $target in /*) path=${target#/} ;; *) path=$(dirname "$path")/$target ;; esac
    hops=$((hops + 1))
  done
  echo "$path"
}

# Copies FILEs (paths inside ROOT) into DEST with every shared library they load, recursively,
# and the dynamic loader, each under the path the loader looks for.
elf_closure() { # ROOT DEST FILE...
  local root=$1 dest=$2 file lib found interp
  shift 2
  local -a queue=("$@")
  local -A seen=()
  while [ ${#queue[@]} -gt 0 ]; do
    file=${queue[0]}
    queue=("${queue[@]:1}")
    [ -z "${seen[$file]:-}" ] || continue
    seen[$file]=1
    mkdir -p "$dest/$(dirname "$file")"
    cp "$root/$(resolve_in "$root" "$file")" "$dest/$file"
    interp=$(readelf -l "$dest/$file" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
    [ -z "$interp" ] || queue+=("${interp#/}")
    for lib in $(readelf -d "$dest/$file" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
      found=$(cd "$root" && { find lib lib64 usr/lib -name "$lib" 2>/dev/null || true; } | sort | head -1)
      [ -n "$found" ] || die "$file needs $lib, which no package of its closure has"
      queue+=("$found")
    done
  done
}

link_into() { # SRC-DIR DEST-DIR NAME...: hard links (copies across file systems) of cached builds
  local src=$1 dest=$2 name
  shift 2
  mkdir -p "$dest"
  for name in "$@"; do
    [ -f "$src/$name" ] || die "$src has no $name"
    ln -f "$src/$name" "$dest/$name" 2>/dev/null || cp -f "$src/$name" "$dest/$name"
  done
}

declare -A BUILT # "name arch" -> the cache directory this run built or found
built() { # NAME ARCH
  [ -n "${BUILT["$1 $2"]:-}" ] || die "internal: $1 for $2 was not built"
  echo "${BUILT["$1 $2"]}"
}

echo "Building Kubernetes $VERSION for ${ARCH_LIST[*]} into $OUT (cache $CACHE)"
rm -rf "$OUT.tmp"
for arch in "${ARCH_LIST[@]}"; do
  for entry in "${COMPONENTS[@]}"; do
    build_component "${entry%%:*}" "${entry#*:}" "$arch"
  done
  build_pause "$arch"
  build_userspace "$arch"
  build_haproxy "$arch"
  build_ipvsadm "$arch"

  node=$OUT.tmp/node/$arch images=$OUT.tmp/images/$arch
  link_into "$(built kubernetes "$arch")" "$node" kubeadm kubelet kubectl
  link_into "$(built kubernetes "$arch")" "$images" kube-apiserver kube-controller-manager kube-scheduler kube-proxy
  link_into "$(built containerd "$arch")" "$node" containerd containerd-shim-runc-v2 ctr
  link_into "$(built runc "$arch")" "$node" runc
  link_into "$(built crictl "$arch")" "$node" crictl
  link_into "$(built helm "$arch")" "$node" helm
  link_into "$(built cni-plugins "$arch")" "$node/cni" bridge ptp loopback vlan host-local static portmap bandwidth firewall tuning
  link_into "$(built cni-flannel "$arch")" "$node/cni" flannel
  link_into "$(built etcd "$arch")" "$images" etcd etcdctl etcdutl
  link_into "$(built coredns "$arch")" "$images" coredns
  link_into "$(built flannel "$arch")" "$images" flanneld
  link_into "$(built pause "$arch")" "$images" pause
  link_into "$(built ipvsadm "$arch")" "$node" ipvsadm
  cp -a "$(built ipvsadm "$arch")/root" "$node/ipvsadm.d"
  mkdir -p "$OUT.tmp/images/userspace" "$OUT.tmp/images/haproxy"
  cp -a "$CACHE/userspace/$arch/root" "$OUT.tmp/images/userspace/$arch"
  cp -a "$(built haproxy "$arch")/root" "$OUT.tmp/images/haproxy/$arch"
done

# kubeadm's own list of the images it deploys, from the binary just built for this machine.
host_arch=$(dpkg --print-architecture)
kubeadm=$OUT.tmp/node/$host_arch/kubeadm
[ -x "$kubeadm" ] || kubeadm=$(built kubernetes "$host_arch")/kubeadm
"$kubeadm" config images list --kubernetes-version "$KUBERNETES" > "$OUT.tmp/imageList"
expect() { grep -qx "$1" "$OUT.tmp/imageList" || die "kubeadm $KUBERNETES deploys $(grep "/${2}:" "$OUT.tmp/imageList"), versions/$VERSION builds $1"; }
expect "registry.k8s.io/etcd:${ETCD#v}-0" etcd
expect "registry.k8s.io/coredns/coredns:$COREDNS" coredns
expect "registry.k8s.io/pause:$PAUSE" pause
grep -q "image: ghcr.io/flannel-io/flannel:$FLANNEL\$" "$ROOT/rootfs/kubernetes/manifests/kube-flannel.yml" ||
  die "rootfs/kubernetes/manifests/kube-flannel.yml does not run flannel $FLANNEL (versions/$VERSION): update its image tags"
# The workers' apiserver balancer (where there is no IPVS) is in the registry too.
echo "kiln.local/haproxy:$HAPROXY_TAG" >> "$OUT.tmp/imageList"
# The image's kubeadm configuration, for this version.
mkdir -p "$OUT.tmp/etc"
sed "s/^kubernetesVersion: .*/kubernetesVersion: $KUBERNETES/" "$ROOT/rootfs/kubernetes/etc/kubeadm.yml" > "$OUT.tmp/etc/kubeadm.yml"
# containerd's sandbox image: the pause kubeadm's release deploys.
mkdir -p "$OUT.tmp/etc/containerd"
sed "s/PAUSE_TAG/$PAUSE/" "$ROOT/rootfs/kubernetes/etc/containerd/config.toml" > "$OUT.tmp/etc/containerd/config.toml"
{
  sed -e '/^#/d' -e '/^$/d' "$HERE/versions/$VERSION"
  echo "HAPROXY=$HAPROXY_TAG"
  echo "GO=$(go env GOVERSION)"
} > "$OUT.tmp/versions.env"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "Built Kubernetes $VERSION for ${ARCH_LIST[*]} in $(elapsed "$STARTED"): $OUT"

# Sourced by build.sh and new-wrapper.sh: what each upstream component is, where its Go module
# lives and how Kubernetes' (or the component's own) release build links it. One function per
# component sets (`component` resets the optional ones first):
#   MODULE      the Go module the wrapper requires
#   PACKAGES    "binary=package ..." to build (the binary's name in bin/<arch>/)
#   CGO         1 when upstream needs cgo (runc: nsenter and libseccomp; flannel's udp backend),
#               else 0; cgo builds link statically as upstream's releases do
#   SYSROOT_PACKAGES  Debian packages (of the target architecture) cgo compiles against
#   TAGS        Go build tags upstream's release build uses
#   LDFLAGS     the version stamps upstream's own build sets (-s -w is added for all)
#   EXTRA_MODULES  further modules of the same version the packages live in
#   PATCH       a function run in a copy of the module's source before it is built, when a
#               change is unavoidable here (each says why)
# $1 is the component's version (e.g. v1.37.2); MODULE_TIME (the module's publication time,
# from the proxy) stands in for the build date so that two builds give the same bytes.

component_kubernetes() {
  local v=$1 minor
  minor=${v#v1.}; minor=${minor%%.*}
  MODULE=k8s.io/kubernetes
  PACKAGES="kubeadm=k8s.io/kubernetes/cmd/kubeadm kubelet=k8s.io/kubernetes/cmd/kubelet
    kubectl=k8s.io/kubernetes/cmd/kubectl kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler kube-proxy=k8s.io/kubernetes/cmd/kube-proxy"
  # hack/lib/version.sh stamps both version packages; "archive" is its tree state for a build
  # from a source archive, which is what a module is: it carries no git commit (left empty).
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitVersion=$v"
    LDFLAGS+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=archive -X $pkg.buildDate=$MODULE_TIME"
  done
}

component_containerd() {
  local v=$1
  MODULE=github.com/containerd/containerd/v2
  PACKAGES="containerd=$MODULE/cmd/containerd containerd-shim-runc-v2=$MODULE/cmd/containerd-shim-runc-v2
    ctr=$MODULE/cmd/ctr"
  # The tags of containerd's static release build that need no C library.
  TAGS="no_btrfs no_devmapper netgo osusergo"
  LDFLAGS="-X $MODULE/version.Version=$v"
}

component_runc() {
  local v=$1
  MODULE=github.com/opencontainers/runc
  PACKAGES="runc=github.com/opencontainers/runc"
  CGO=1
  SYSROOT_PACKAGES="libseccomp-dev libseccomp2"
  # Upstream's tags less libpathrs (a Rust library; runc falls back to its Go pathrs-lite).
  TAGS="seccomp urfave_cli_no_docs"
  LDFLAGS="-X main.gitCommit= -linkmode external -extldflags -static"
}

component_cni_plugins() {
  local v=$1 p
  MODULE=github.com/containernetworking/plugins
  PACKAGES=""
  for p in main/bridge main/ptp main/loopback main/vlan ipam/host-local ipam/static meta/portmap \
    meta/bandwidth meta/firewall meta/tuning; do
    PACKAGES+=" ${p#*/}=$MODULE/plugins/$p"
  done
  LDFLAGS="-X $MODULE/pkg/utils/buildversion.BuildVersion=$v"
}

# Flannel's CNI plugin (reads flanneld's subnet.env, delegates to bridge and host-local). Its own
# module is not served here; the plugins module carried the same plugin until v1.0.0.
component_cni_flannel() {
  local v=$1
  MODULE=github.com/containernetworking/plugins
  PACKAGES="flannel=$MODULE/plugins/meta/flannel"
  LDFLAGS="-X $MODULE/pkg/utils/buildversion.BuildVersion=$v"
}

component_flannel() {
  local v=$1
  MODULE=github.com/flannel-io/flannel
  PACKAGES="flanneld=github.com/flannel-io/flannel"
  CGO=1
  LDFLAGS="-X $MODULE/pkg/version.Version=$v -linkmode external -extldflags -static"
  PATCH=flannel_without_tencentvpc
}

# flanneld links every backend; the Tencent Cloud VPC one needs an SDK module the Go module
# proxy here does not serve. Offline clusters use vxlan (or host-gw): that backend is left out.
flannel_without_tencentvpc() {
  grep -q 'pkg/backend/tencentvpc"' main.go
  sed -i '/pkg\/backend\/tencentvpc"/d' main.go
}

component_etcd() {
  local v=$1
  MODULE=go.etcd.io/etcd/server/v3
  PACKAGES="etcd=go.etcd.io/etcd/server/v3 etcdctl=go.etcd.io/etcd/etcdctl/v3 etcdutl=go.etcd.io/etcd/etcdutl/v3"
  EXTRA_MODULES="go.etcd.io/etcd/etcdctl/v3 go.etcd.io/etcd/etcdutl/v3"
}

component_coredns() {
  local v=$1
  MODULE=github.com/coredns/coredns
  PACKAGES="coredns=github.com/coredns/coredns"
}

component_crictl() {
  local v=$1
  MODULE=sigs.k8s.io/cri-tools
  PACKAGES="crictl=sigs.k8s.io/cri-tools/cmd/crictl"
  LDFLAGS="-X sigs.k8s.io/cri-tools/pkg/version.Version=$v"
}

component_helm() {
  local v=$1
  MODULE=helm.sh/helm/v4
  PACKAGES="helm=helm.sh/helm/v4/cmd/helm"
  LDFLAGS="-X helm.sh/helm/v4/internal/version.version=$v -X helm.sh/helm/v4/internal/version.gitTreeState=archive"
}

# Loads one component's description: component NAME VERSION.
component() {
  # Defaults: pure Go, no tags, no stamps; each component sets what differs.
  CGO=0 TAGS="" LDFLAGS="" EXTRA_MODULES="" PATCH="" SYSROOT_PACKAGES=""
  local fn=component_${1//-/_}
  declare -F "$fn" >/dev/null || { echo "error: unknown component '$1'" >&2; return 1; }
  "$fn" "$2"
}

#!/usr/bin/env bash
# make demo: a real Kubernetes cluster from kiln's source-built image. `make kubernetes-image`
# (a dependency) builds kiln/kubernetes (Kubernetes, etcd, containerd, runc, CNI, CoreDNS, helm,
# flannel from pinned sources, amd64 + arm64; cached after the first time); this builds the demo
# app on it (kubefiles/hello), starts 3 amd64 test hosts (1 master, 2 workers: arm64 hosts run
# under qemu-user here, where runc cannot start containers), `kiln run`s the image and shows
# the nodes, the app's pods on every node, its NodePort answering from this machine, the Helm
# release and `kiln status`.
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
VERSION=${KUBE_VERSION:-v1.37.2}
. "$ROOT/e2e/lib.sh"
DEMO=$ROOT/.demo
mkdir -p "$DEMO"

echo "==> kiln build kiln-demo/hello:1 FROM kiln/kubernetes:$VERSION (kubefiles/hello: a Deployment, its Services, a Helm chart)"
"$ROOT/kubefiles/prepare.sh" >/dev/null
"$KILN" build -q --platform linux/amd64,linux/arm64 -t kiln-demo/hello:1 --build-arg "KUBE_IMAGE=kiln/kubernetes:$VERSION" \
  --image-source "$ROOT/kubefiles/etcd/app-image.tar" "$ROOT/kubefiles/hello" >/dev/null
"$KILN" images
echo
echo "==> test hosts: 3 amd64 (systemd, sshd, own IPs; see docs/TESTING.md)"
# Fresh hosts: a previous demo's cluster goes with them, and so does its state here.
"$HOSTS" down >/dev/null 2>&1 || true
rm -rf "${KILN_ROOT:-/var/lib/kiln}/clusters/kiln-demo"
"$HOSTS" up --hosts 3 --arch amd64,amd64,amd64 >/dev/null
INV=$("$HOSTS" inventory)
KEY=$(jq -r .ssh_key "$INV")
H1=$(ip_of kiln-h1); H2=$(ip_of kiln-h2); H3=$(ip_of kiln-h3)
"$HOSTS" status
cat > "$DEMO/Clusterfile" <<CF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: kiln-demo
spec:
  image: kiln-demo/hello:1
  ssh: {user: root, pk: $KEY}
  hosts:
    - ips: [$H1]
      roles: [master]
    - ips: [$H2, $H3]
      roles: [node]
---
# The test hosts share this machine's disk: absolute eviction thresholds, so a nearly full
# disk does not evict the demo (kiln check says when the kubelet's relative defaults would).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
evictionHard: {nodefs.available: 2Gi, imagefs.available: 2Gi, memory.available: 100Mi}
CF
rm -f "$DEMO/known_hosts"
echo
echo "==> kiln run -f .demo/Clusterfile --wait-ready 300"
"$KILN" run -f "$DEMO/Clusterfile" --known-hosts "$DEMO/known_hosts" --accept-new-host-keys --wait-ready 300
echo
echo "==> kubectl get nodes -o wide -L kubernetes.io/arch (on master0)"
on kiln-h1 -- kubectl get nodes -o wide -L kubernetes.io/arch
on kiln-h1 -- kubectl wait --for=condition=Ready pod --all --timeout=180s >/dev/null
echo
echo "==> the app's pods, one per node, and the Helm release the image's helm installed"
on kiln-h1 -- kubectl get pods -o wide
on kiln-h1 -- helm list
echo
echo "==> from this machine, through the NodePort on each host: curl http://<host>:30080/"
for ip in "$H1" "$H2" "$H3"; do printf '%s: %s\n' "$ip" "$(curl -sf -m 5 "http://$ip:30080/" | head -1)"; done
echo
"$KILN" kubeconfig -f "$DEMO/Clusterfile" -o "$DEMO/kubeconfig" 2>/dev/null
echo "==> kiln status kiln-demo"
"$KILN" status kiln-demo
echo
echo "kubectl from here:  $ROOT/rootfs/kube-bin/$VERSION/node/amd64/kubectl --kubeconfig .demo/kubeconfig get pods -A"
echo "Run it again (nothing is re-sent): $KILN run -f .demo/Clusterfile --known-hosts .demo/known_hosts"
echo "Remove it (hosts as before):      $KILN delete --cluster kiln-demo --known-hosts .demo/known_hosts"

#!/usr/bin/env bash
# make bench-kubernetes: time to every node Ready for `kiln run` of kiln/kubernetes on 3 masters
# + 1 worker (fresh amd64 test hosts each sample), beside the same cluster made by hand with
# kubeadm on the same kind of hosts, following kubeadm's HA guide with the image's binaries
# installed and its container images preloaded into containerd (untimed preparation): kernel
# settings, `kubeadm init --upload-certs`, two masters and the worker joined one after another,
# flannel applied, wait for Ready. Both use the same binaries, images, flannel manifest and the
# settings this kernel needs (cgroup v1 opt-in, nftables kube-proxy, fixed conntrack).
#
# Printed per sample and as min/median over BENCH_SAMPLES (3) samples of each, kiln and kubeadm
# taking turns (which goes first alternates):
#   - kubeadm by hand: from the first timed step to all Ready (preparation not counted);
#   - kiln, bring-up: from its `bring-up` phase to all Ready (the same steps: kubeadm init, joins,
#     CNI, wait), so the ratio compares like with like. Goal <= 1.2x;
#   - kiln, whole run: preflight, rootfs to every host, OS tuning, the in-cluster registry,
#     containerd, bring-up: what an operator waits for, where the hand-made cluster's preparation
#     is not even counted.
# Peak RSS of kiln too.
#
#   e2e/bench/kubernetes.sh KILN_BINARY
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
VERSION=${KUBE_VERSION:-v1.37.2}
TAG=kiln/kubernetes:$VERSION
WORK=${BENCH_DIR:-$ROOT/.bench/kubernetes}
SAMPLES=${BENCH_SAMPLES:-3}
STATE=${KILN_ROOT:-/var/lib/kiln}/clusters/bench-kube
. "$(dirname "$0")/lib.sh"
rm -rf "$WORK" && mkdir -p "$WORK"
"$KILN" inspect "$TAG" >/dev/null 2>&1 || { echo "no $TAG in kiln's store: run make kubernetes-image" >&2; exit 1; }

# --- what the hand-made cluster uses: the image's amd64 rootfs and its registry -------------------
echo "Unpacking $TAG (linux/amd64) for the kubeadm baseline"
mkdir -p "$WORK/rootfs"
STORE=${KILN_ROOT:-/var/lib/kiln}/oci
for layer in $("$KILN" inspect --platform linux/amd64 "$TAG" |
  jq -r '.platforms[0].manifest.layers[] | select((.annotations // {})["io.kiln.layer.content"] != "registry") | .digest'); do
  tar -C "$WORK/rootfs" -xf "$STORE/blobs/sha256/${layer#sha256:}"
done
IMAGES=$("$WORK/rootfs/bin/kubeadm" config images list --kubernetes-version "$VERSION"; sed -n 's/^ *image: *//p' "$WORK/rootfs/application/apps/flannel/kube-flannel.yml" | sort -u)

host_up() { # fresh hosts for one sample
  "$HOSTS" down >/dev/null 2>&1 || true
  "$HOSTS" up --hosts 4 --arch amd64,amd64,amd64,amd64 >/dev/null
  INV=$("$HOSTS" inventory)
  KEY=$(jq -r .ssh_key "$INV")
  mapfile -t IPS < <(jq -r '.hosts[].ip' "$INV")
  mapfile -t NAMES < <(jq -r '.hosts[].name' "$INV")
  GATEWAY=$(jq -r .gateway "$INV")
  rm -f "$WORK/known_hosts"
  for name in "${NAMES[@]}"; do on "$name" "systemctl is-system-running --wait >/dev/null 2>&1 || true"; done
}
on() { "$HOSTS" ssh "$1" -- "$2"; }
on_all() { # SCRIPT: on every host at once
  local name pids=()
  for name in "${NAMES[@]}"; do on "$name" "$1" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
}
# Seconds between the first line matching START and the last line of a timestamped log.
span() { awk -v start="$2" '$0 ~ start && !t0 {t0 = $1} {last = $1} END {if (t0) printf "%.1f", last - t0}' "$1"; }
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }

# --- kiln run ----------------------------------------------------------------------------------
kiln_sample() { # N
  rm -rf "$STATE"
  cat > "$WORK/Clusterfile" <<EOF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: bench-kube
spec:
  image: $TAG
  ssh: {user: root, pk: $KEY}
  hosts:
    - ips: [${IPS[0]}, ${IPS[1]}, ${IPS[2]}]
      roles: [master]
    - ips: [${IPS[3]}]
      roles: [node]
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
evictionHard: {nodefs.available: 2Gi, imagefs.available: 2Gi, memory.available: 100Mi}
EOF
  local t0 t1
  t0=$(now)
  /usr/bin/time -f '%M' -o "$WORK/kiln.rss" "$KILN" run -f "$WORK/Clusterfile" --known-hosts "$WORK/known_hosts" \
    --accept-new-host-keys --wait-ready 600 2>&1 | stamp > "$WORK/kiln-$1.log"
  t1=$(now)
  grep -q "==> bring-up" "$WORK/kiln-$1.log" || { tail -20 "$WORK/kiln-$1.log"; exit 1; }
  KILN_TOTAL+=("$(echo "$t1 - $t0" | bc)")
  KILN_BRINGUP+=("$(echo "$t1 - $(awk '/==> bring-up/ {print $1; exit}' "$WORK/kiln-$1.log")" | bc)")
  KILN_RSS+=("$(cat "$WORK/kiln.rss")")
  printf '  kiln    #%s: whole run %6.1f s, bring-up to all Ready %6.1f s, peak RSS %s KiB\n' \
    "$1" "${KILN_TOTAL[-1]}" "${KILN_BRINGUP[-1]}" "${KILN_RSS[-1]}"
}

# --- kubeadm by hand -----------------------------------------------------------------------------
kubeadm_prepare() { # untimed: binaries installed, containerd running, images preloaded
  local image port=5395
  "$KILN" registry serve --image "$TAG" --listen "$GATEWAY:$port" > "$WORK/serve.log" 2>&1 &
  local serve=$!
  for _ in $(seq 100); do curl -sf "http://$GATEWAY:$port/v2/" >/dev/null && break; sleep 0.2; done
  local copies=()
  for name in "${NAMES[@]}"; do
    tar -C "$WORK/rootfs" -c bin etc/containerd/config.toml etc/systemd application/apps/flannel/kube-flannel.yml |
      on "$name" "mkdir -p /opt/bench && tar -C /opt/bench -x" &
    copies+=($!)
  done
  for p in "${copies[@]}"; do wait "$p"; done
  local pull=""
  for image in $IMAGES; do
    pull+="ctr -n k8s.io images pull --plain-http --platform linux/amd64 $GATEWAY:$port/$image >/dev/null 2>/tmp/pull.err &&
      ctr -n k8s.io images tag --force $GATEWAY:$port/$image $image >/dev/null 2>>/tmp/pull.err || { grep -v DEPRECATION /tmp/pull.err; exit 1; }
"
  done
  on_all "set -e; cd /opt/bench
    install -m 0755 bin/kubeadm bin/kubelet bin/kubectl /usr/bin/
    install -m 0755 bin/containerd bin/containerd-shim-runc-v2 bin/ctr bin/runc /usr/local/bin/
    mkdir -p /opt/cni/bin /etc/containerd/conf.d /etc/systemd/system/kubelet.service.d
    install -m 0755 bin/cni/* /opt/cni/bin/
    install -m 0644 etc/containerd/config.toml /etc/containerd/config.toml
    # This kernel's container hosts cannot lower oom_score_adj (what kiln's preflight finds).
    printf \"[plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n\" > /etc/containerd/conf.d/oom.toml
    printf '[Service]\nExecStart=/usr/local/bin/containerd\nRestart=always\nDelegate=yes\nKillMode=process\n[Install]\nWantedBy=multi-user.target\n' > /etc/systemd/system/containerd.service
    install -m 0644 etc/systemd/kubelet.service /etc/systemd/system/kubelet.service
    install -m 0644 etc/systemd/10-kubeadm.conf /etc/systemd/system/kubelet.service.d/10-kubeadm.conf
    systemctl daemon-reload && systemctl enable --now containerd >/dev/null 2>&1 && systemctl enable kubelet >/dev/null 2>&1
    for _ in \$(seq 50); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
    $pull"
  kill "$serve"; wait "$serve" 2>/dev/null || true
}

kubeadm_sample() { # N
  kubeadm_prepare
  local m0=${IPS[0]} t0 t1 key join
  cat > "$WORK/kubeadm.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  criSocket: unix:///run/containerd/containerd.sock
  ignorePreflightErrors: [SystemVerification]
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $VERSION
controlPlaneEndpoint: $m0:6443
networking: {podSubnet: 100.64.0.0/10, serviceSubnet: 10.96.0.0/22}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
failCgroupV1: false
evictionHard: {nodefs.available: 2Gi, imagefs.available: 2Gi, memory.available: 100Mi}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
conntrack: {maxPerCore: 0}
EOF
  on "${NAMES[0]}" "cat > /root/kubeadm.yaml" < "$WORK/kubeadm.yaml"
  t0=$(now)
  {
    on_all "modprobe overlay 2>/dev/null; modprobe br_netfilter 2>/dev/null
      sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1; swapoff -a"
    on "${NAMES[0]}" "kubeadm init --config /root/kubeadm.yaml --upload-certs > /root/init.out 2>&1 || { tail -30 /root/init.out; exit 1; }
      mkdir -p /root/.kube && cp /etc/kubernetes/admin.conf /root/.kube/config"
    key=$(on "${NAMES[0]}" "kubeadm init phase upload-certs --upload-certs --config /root/kubeadm.yaml 2>/dev/null | tail -1")
    join=$(on "${NAMES[0]}" "kubeadm token create --print-join-command 2>/dev/null")
    for i in 1 2; do
      on "${NAMES[$i]}" "$join --control-plane --certificate-key $key --cri-socket unix:///run/containerd/containerd.sock \
        --ignore-preflight-errors SystemVerification > /root/join.out 2>&1 || { tail -30 /root/join.out; exit 1; }"
    done
    on "${NAMES[3]}" "$join --cri-socket unix:///run/containerd/containerd.sock --ignore-preflight-errors SystemVerification \
      > /root/join.out 2>&1 || { tail -30 /root/join.out; exit 1; }"
    on "${NAMES[0]}" "kubectl apply -f /opt/bench/application/apps/flannel/kube-flannel.yml >/dev/null &&
      kubectl wait --for=condition=Ready node --all --timeout=600s >/dev/null"
  } > "$WORK/kubeadm-$1.log" 2>&1 || { cat "$WORK/kubeadm-$1.log"; exit 1; }
  t1=$(now)
  KUBEADM+=("$(echo "$t1 - $t0" | bc)")
  printf '  kubeadm #%s: by hand to all Ready %6.1f s (preparation untimed)\n' "$1" "${KUBEADM[-1]}"
}

KILN_TOTAL=() KILN_BRINGUP=() KILN_RSS=() KUBEADM=()
echo "kiln run vs kubeadm by hand: 3 masters + 1 worker, fresh amd64 hosts, $SAMPLES samples each"
for i in $(seq "$SAMPLES"); do
  if [ $((i % 2)) = 1 ]; then order=(kiln kubeadm); else order=(kubeadm kiln); fi
  for who in "${order[@]}"; do host_up; "${who}_sample" "$i"; done
done
"$HOSTS" down >/dev/null 2>&1 || true
rm -rf "$STATE"

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
stats() { printf 'min %.1f s, median %.1f s' "$(minimum "$@")" "$(median "$@")"; }
minimum() { printf '%s\n' "$@" | sort -n | head -1; }
echo
echo "kubeadm by hand, to all Ready:       $(stats "${KUBEADM[@]}")"
echo "kiln, bring-up to all Ready:         $(stats "${KILN_BRINGUP[@]}")"
echo "kiln, whole run (from nothing):      $(stats "${KILN_TOTAL[@]}")"
echo "kiln peak RSS:                       $(( $(printf '%s\n' "${KILN_RSS[@]}" | sort -n | tail -1) / 1024 )) MiB"
printf 'ratio kiln bring-up / kubeadm:       min %.2fx, median %.2fx (goal <= 1.2x)\n' \
  "$(echo "$(minimum "${KILN_BRINGUP[@]}") / $(minimum "${KUBEADM[@]}")" | bc -l)" \
  "$(echo "$(median "${KILN_BRINGUP[@]}") / $(median "${KUBEADM[@]}")" | bc -l)"
printf 'ratio kiln whole run / kubeadm:      min %.2fx, median %.2fx\n' \
  "$(echo "$(minimum "${KILN_TOTAL[@]}") / $(minimum "${KUBEADM[@]}")" | bc -l)" \
  "$(echo "$(median "${KILN_TOTAL[@]}") / $(median "${KUBEADM[@]}")" | bc -l)"

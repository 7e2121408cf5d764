#!/usr/bin/env bash
# e2e: the `kubernetes` runtime on 3 masters + 2 workers of mixed architectures, with the
# stand-ins of e2e/fake-kube in place of kubeadm, kubelet, kubectl and ipvsadm (real ones cannot
# be downloaded here; the stand-ins validate what they are given as the real ones would). The
# stand-in base image is built from rootfs/ by kubefiles/kubernetes/Kubefile with the stand-ins
# as its binaries; the test image adds a CNI and an app.
#
# First run: kubeadm join fails on one worker (the stand-in fails on demand) → the run stops
# with the host, the command, kubeadm's output, the kubelet's journal and a hint. Second run,
# fixed: resumes without re-initialising master0; every kubeadm call is valid and in order
# (init, token, upload-certs, masters one at a time, workers in parallel); the workers' IPVS
# virtual server lists the three masters; every node is Ready with its role, labels and taints;
# the CNI and the app are applied. `kiln delete` leaves the hosts as they were.
# Prints `N passed, N failed`.
#
#   e2e/test-kubernetes.sh KILN_BINARY
set -uo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
WORK=$(mktemp -d /tmp/kiln-e2e-kube.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/e2e/lib.sh"
kiln() { "$KILN" --root "$WORK/store" "$@"; }
ALL=(kiln-h1 kiln-h2 kiln-h3 kiln-h4 kiln-h5)

"$HOSTS" up --hosts 7 --arch amd64,amd64,arm64,amd64,arm64,amd64,amd64 >/dev/null || { echo "0 passed, 1 failed (hosts did not come up)"; exit 1; }
INV=$("$HOSTS" inventory)
KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ssh_key"])' "$INV")
H1=$(ip_of kiln-h1); H2=$(ip_of kiln-h2); H3=$(ip_of kiln-h3); H4=$(ip_of kiln-h4); H5=$(ip_of kiln-h5)
H6=$(ip_of kiln-h6); H7=$(ip_of kiln-h7)

# --- images: the stand-in base from rootfs/, then the test image with a CNI and an app -----------
"$ROOT/kubefiles/prepare.sh" >/dev/null || { echo "0 passed, 1 failed (prepare.sh)"; exit 1; }
CTX=$WORK/context
mkdir -p "$CTX"
tar -C "$ROOT/rootfs" --exclude=./kube-bin -cf - . | tar -C "$CTX" -xf -
for arch in amd64 arm64; do
  mkdir -p "$CTX/kube-bin/node/$arch"
  for tool in kubeadm kubelet kubectl ipvsadm; do install -m 0755 "$ROOT/e2e/fake-kube/fakekube.py" "$CTX/kube-bin/node/$arch/$tool"; done
  # Debian's containerd and runc stand in for the source-built ones.
  cp "$CTX/bin/$arch/"{containerd,containerd-shim-runc-v2,ctr,runc} "$CTX/kube-bin/node/$arch/"
done
mkdir -p "$CTX/kube-bin/etc"
cp "$CTX/kubernetes/etc/kubeadm.yml" "$CTX/kube-bin/etc/kubeadm.yml"
# The test machine's kernel has no IP_VS and no loadable modules (/lib/modules is empty), and
# the hosts (containers) see no /sys/module, so the stand-in image asks for no modules.
printf '# e2e stand-in image: no loadable kernel modules on the test hosts\n' > "$CTX/kubernetes/etc/modules-load.d/k8s.conf"
# The stand-ins need no control-plane images (build.sh writes the real list).
printf '# e2e stand-ins: no control-plane images\n' > "$CTX/kube-bin/imageList"
kiln -q build --build-mode lite --platform linux/amd64,linux/arm64 -t kiln-e2e/kubernetes-stand-ins:v1.30.6 \
  -f "$ROOT/kubefiles/kubernetes/Kubefile" --build-arg KUBE_BIN=kube-bin "$CTX" >/dev/null \
  || { echo "0 passed, 1 failed (stand-in base image build)"; exit 1; }
# The base carries the real image's flannel app, which the stand-ins do not launch: its image is
# not cached (the stand-in test image has its own flannel-shaped CNI).
grep -h '^ *image:' "$CTX/kubernetes/manifests/kube-flannel.yml" | sed 's/^ *image: *//' | sort -u > "$WORK/ignored-images"
kiln -q build --platform linux/amd64,linux/arm64 -t kiln-e2e/kube-app:1 --ignored-image-list "$WORK/ignored-images" \
  --image-source "$ROOT/kubefiles/etcd/app-image.tar" "$ROOT/e2e/images/kube-e2e" >/dev/null \
  || { echo "0 passed, 1 failed (test image build)"; exit 1; }

cat > "$WORK/Clusterfile" <<EOF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: e2e-kube
spec:
  image: kiln-e2e/kube-app:1
  ssh:
    user: root
    pk: $KEY
  hosts:
    - ips: [$H1, $H3, $H4]
      roles: [master]
    - ips: [$H2]
      roles: [node]
      labels:
        disk: ssd
      taints: ["dedicated=db:NoSchedule"]
    - ips: [$H5]
      roles: [node]
      ssh:
        user: ops
        passwd: kiln-e2e-ops
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
apiServer:
  certSANs: [kube.e2e.example, 192.0.2.10]
EOF
SNAPSHOT_EXTRA_DIRS="/var/lib/kubelet /var/lib/etcd /opt/cni /root/.kube /var/lib/fake-kube /var/log/fake-kube"
BEFORE=$(snapshot "${ALL[@]}")
BEFORE_H4=$(snapshot kiln-h4); BEFORE_H7=$(snapshot kiln-h7)
RUN=(kiln run -f "$WORK/Clusterfile" --known-hosts "$WORK/known_hosts" --accept-new-host-keys --wait-ready 120)

# --- a worker's kubeadm join fails: the run stops with a report ---------------------------------
on kiln-h5 -- 'mkdir -p /etc/kiln-fake-kube && touch /etc/kiln-fake-kube/fail-join'
# kiln-h2's join takes 15 s, so kiln-h5's (failing) join overlaps it if workers join in parallel.
on kiln-h2 -- 'mkdir -p /etc/kiln-fake-kube && echo 15 > /etc/kiln-fake-kube/join-delay'
"${RUN[@]}" > "$WORK/fail.out" 2>&1; rc=$?
check "a failing kubeadm join stops the run (non-zero exit)" [ "$rc" != 0 ]
check "the report names the host and the command" grep -q "kubeadm join --config .* failed on $H5" "$WORK/fail.out"
check "the report shows kubeadm's output" grep -q "error execution phase kubelet-start" "$WORK/fail.out"
check "the report shows the kubelet's journal" grep -q "journalctl -u kubelet" "$WORK/fail.out"
check "the report gives a hint" grep -q "hint: " "$WORK/fail.out"
check "no token is printed" bash -c "! grep -Eq '[a-z0-9]{6}\.[a-z0-9]{16}' '$WORK/fail.out'"
grep -q "hint: " "$WORK/fail.out" || tail -n 40 "$WORK/fail.out"

# --- fixed: the run resumes ---------------------------------------------------------------------
on kiln-h5 -- 'rm -rf /etc/kiln-fake-kube'
on kiln-h2 -- 'rm -rf /etc/kiln-fake-kube'
"${RUN[@]}" --json > "$WORK/run.json" 2> "$WORK/run.err"; rc=$?
check "the second run succeeds" [ "$rc" = 0 ]
[ "$rc" = 0 ] || { tail -n 30 "$WORK/run.err"; head -c 3000 "$WORK/run.json"; }

for h in "${ALL[@]}"; do on "$h" -- cat /var/log/fake-kube/calls.log > "$WORK/calls-$h.log" 2>/dev/null; done
python3 - "$WORK" "$H1" > "$WORK/order.out" 2>&1 <<'PY'
import glob, json, sys
work = sys.argv[1]
calls = []
for path in glob.glob(work + "/calls-*.log"):
    calls += [json.loads(l) for l in open(path) if l.strip()]
calls.sort(key=lambda c: c["t"])
kubeadm = [c for c in calls if c["tool"] == "kubeadm"]
def span(host, verb):
    start = [c["t"] for c in kubeadm if c["host"] == host and c["argv"][:1] == [verb] and c["event"] == "call"]
    done = [c["t"] for c in kubeadm if c["host"] == host and c["argv"][:1] == [verb] and c["event"] == "done"]
    return (start[-1], done[-1]) if start and done else None
problems = []
inits = [c for c in kubeadm if c["argv"][:1] == ["init"] and c["argv"][1:2] != ["phase"] and c["event"] == "call"]
if [c["host"] for c in inits] != ["kiln-h1"]:
    problems.append("kubeadm init ran %d times (want once, on kiln-h1): %s" % (len(inits), [c["host"] for c in inits]))
init = span("kiln-h1", "init")
masters = {h: span(h, "join") for h in ("kiln-h3", "kiln-h4")}
workers = {h: span(h, "join") for h in ("kiln-h2", "kiln-h5")}
for h, s in {**masters, **workers}.items():
    if s is None:
        problems.append("%s never finished kubeadm join" % h)
if not problems:
    for h, s in {**masters, **workers}.items():
        if s[0] < init[1]:
            problems.append("%s joined before init finished" % h)
    (a, sa), (b, sb) = sorted(masters.items(), key=lambda kv: kv[1][0])
    if sb[0] < sa[1]:
        problems.append("masters joined at the same time: %s %s, %s %s" % (a, sa, b, sb))
    # Both workers started joining in the first run (kiln-h5's failed on demand) before either
    # finished: in parallel.
    first_call = {h: min(c["t"] for c in kubeadm if c["host"] == h and c["argv"][:1] == ["join"]) for h in workers}
    first_done = {h: min(c["t"] for c in kubeadm if c["host"] == h and c["argv"][:1] == ["join"]
                         and c["event"] in ("done", "failed")) for h in workers}
    last_master_done = max(s[1] for s in masters.values())
    if any(t < last_master_done for t in first_call.values()):
        problems.append("a worker joined before the masters finished")
    if not max(first_call.values()) < min(first_done.values()):
        problems.append("workers did not join in parallel: started %s, ended %s" % (first_call, first_done))
    tokens = [c for c in kubeadm if c["argv"][:2] == ["token", "create"] and c["host"] == "kiln-h1"]
    uploads = [c for c in kubeadm if c["argv"][:3] == ["init", "phase", "upload-certs"] and c["host"] == "kiln-h1"]
    if not tokens or not uploads:
        problems.append("no token create / upload-certs on master0")
    failed = [c for c in calls if c["event"] == "failed" and not (c["host"] == "kiln-h5" and c["argv"][:1] == ["join"])]
    if failed:
        problems.append("stand-in calls failed: %s" % failed)
arches = {c["host"]: c["arch"] for c in kubeadm}
if arches.get("kiln-h3") != "aarch64" or arches.get("kiln-h5") != "aarch64" or arches.get("kiln-h1") != "x86_64":
    problems.append("the stand-ins ran on unexpected architectures: %s" % arches)
print("\n".join(problems) or "ok")
PY
check "kubeadm calls are valid and in order (init once, masters one at a time, workers in parallel)" grep -qx ok "$WORK/order.out"
grep -qx ok "$WORK/order.out" || cat "$WORK/order.out"

ipvs_lists_masters() {
  local out; out=$(on "$1" -- ipvsadm -Ln) || return 1
  for m in "$H1" "$H3" "$H4"; do grep -q -- "-> $m:6443" <<< "$out" || return 1; done
  grep -q "TCP  10.103.97.2:6443 rr" <<< "$out"
}
check "IPVS on worker kiln-h2 lists the three masters" ipvs_lists_masters kiln-h2
check "IPVS on worker kiln-h5 (arm64) lists the three masters" ipvs_lists_masters kiln-h5
check "workers name the apiserver by the VIP" on kiln-h2 -- "grep -q '^10.103.97.2 apiserver.cluster.local # kiln-apiserver\$' /etc/hosts"
check "joined masters name the apiserver by themselves" on kiln-h3 -- "grep -q '^$H3 apiserver.cluster.local # kiln-apiserver\$' /etc/hosts"

on kiln-h1 -- kubectl get nodes -o json > "$WORK/nodes.json" 2>/dev/null
python3 - "$WORK/nodes.json" > "$WORK/nodes.out" 2>&1 <<'PY'
import json, sys
nodes = {n["metadata"]["name"]: n for n in json.load(open(sys.argv[1]))["items"]}
problems = []
if sorted(nodes) != ["kiln-h%d" % i for i in range(1, 6)]:
    problems.append("nodes: %s" % sorted(nodes))
for name, n in nodes.items():
    labels, taints = n["metadata"]["labels"], n["spec"].get("taints", [])
    ready = [c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready"]
    if ready != ["True"]:
        problems.append("%s is not Ready" % name)
    role = "master" if name in ("kiln-h1", "kiln-h3", "kiln-h4") else "node"
    if ("node-role.kubernetes.io/" + role) not in labels:
        problems.append("%s lacks node-role.kubernetes.io/%s" % (name, role))
    if role == "master" and "node-role.kubernetes.io/control-plane" not in labels:
        problems.append("%s lacks the control-plane label" % name)
    arch = "arm64" if name in ("kiln-h3", "kiln-h5") else "amd64"
    if labels.get("kubernetes.io/arch") != arch:
        problems.append("%s reports arch %s" % (name, labels.get("kubernetes.io/arch")))
h2 = nodes.get("kiln-h2", {"metadata": {"labels": {}}, "spec": {}})
if h2["metadata"]["labels"].get("disk") != "ssd":
    problems.append("kiln-h2 lacks disk=ssd")
if {"key": "dedicated", "value": "db", "effect": "NoSchedule"} not in h2["spec"].get("taints", []):
    problems.append("kiln-h2 lacks the taint dedicated=db:NoSchedule: %s" % h2["spec"].get("taints"))
print("\n".join(problems) or "ok")
PY
check "all 5 nodes Ready with their roles, labels, taints and architectures" grep -qx ok "$WORK/nodes.out"
grep -qx ok "$WORK/nodes.out" || cat "$WORK/nodes.out"
check "the CNI was applied and its config is on every node" bash -c "
  '$HOSTS' ssh kiln-h1 -- kubectl get daemonset -o json | grep -q kube-flannel-ds &&
  for h in ${ALL[*]}; do '$HOSTS' ssh \$h -- test -s /etc/cni/net.d/10-kube-flannel-cfg.conflist || exit 1; done"
check "the app was applied" bash -c "'$HOSTS' ssh kiln-h1 -- kubectl get deployment -o json | grep -q '\"name\": \"hello\"'"
kiln kubeconfig -f "$WORK/Clusterfile" -o "$WORK/kubeconfig" 2> "$WORK/kubeconfig.err"
kubeconfig_works() {
  [ "$(stat -c %a "$WORK/kubeconfig")" = 600 ] || return 1
  python3 - "$WORK/kubeconfig" "$WORK" <<'PY' || return 1
import base64, re, sys
text = open(sys.argv[1]).read()
for field, name in [("certificate-authority-data", "ca.crt"), ("client-certificate-data", "admin.crt"), ("client-key-data", "admin.key")]:
    open(sys.argv[2] + "/" + name, "wb").write(base64.b64decode(re.search(field + r": (\S+)", text).group(1)))
PY
  grep -q "server: https://$H1:6443" "$WORK/kubeconfig" &&
    curl -sf --cacert "$WORK/ca.crt" --cert "$WORK/admin.crt" --key "$WORK/admin.key" "https://$H1:6443/api/v1/nodes" \
      | python3 -c 'import json,sys; sys.exit(len(json.load(sys.stdin)["items"]) != 5)'
}
check "kiln kubeconfig writes a 0600 admin kubeconfig that the apiserver accepts from this machine" kubeconfig_works
check "the apiserver certificate carries the Clusterfile's certSANs" bash -c "
  '$HOSTS' ssh kiln-h1 -- openssl x509 -in /etc/kubernetes/pki/apiserver.crt -noout -ext subjectAltName | grep -q 'DNS:kube.e2e.example.*IP Address:192.0.2.10\|IP Address:192.0.2.10.*DNS:kube.e2e.example\|kube.e2e.example'"
check "no join configuration (it holds a token) is left on the hosts" bash -c "
  for h in ${ALL[*]}; do '$HOSTS' ssh \$h -- 'test ! -e /var/lib/kiln/data/e2e-kube/.kiln/kubeadm-join.yaml' || exit 1; done"

# --- kiln cert: expiry, renewal and more apiserver names, with the control plane restarted -------
KH=(--known-hosts "$WORK/known_hosts")
served_cert() { # MASTER_IP OPENSSL_X509_ARGS...: the certificate the apiserver serves now
  local try pem
  for try in 1 2 3 4 5; do
    pem=$(echo | timeout 10 openssl s_client -connect "$1:6443" -CAfile "$WORK/ca.crt" 2>/dev/null) &&
      openssl x509 -noout "${@:2}" <<< "$pem" 2>/dev/null && return 0
    sleep 2
  done
  echo "  no certificate from $1:6443" >&2; return 1
}
kiln cert check-expiration -f "$WORK/Clusterfile" "${KH[@]}" > "$WORK/expiry.txt" 2> "$WORK/expiry.err"; rc=$?
kiln cert check-expiration -f "$WORK/Clusterfile" "${KH[@]}" --json > "$WORK/expiry.json" 2>> "$WORK/expiry.err"
expiry_ok() { # MIN_LEAF_DAYS MAX_LEAF_DAYS
  python3 - "$WORK/expiry.json" "$1" "$2" "$H1" "$H3" "$H4" <<'PY2'
import json, sys
rows = json.load(open(sys.argv[1]))
lo, hi, masters = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
problems = []
for m in masters:
    mine = {r["file"]: r for r in rows if r["host"] == m}
    for f in ["pki/ca.crt", "pki/etcd/ca.crt", "pki/front-proxy-ca.crt"]:
        if f not in mine or not mine[f]["is_ca"] or mine[f]["residual_days"] < 3640:
            problems.append("%s %s: %s" % (m, f, mine.get(f)))
    for f in ["pki/apiserver.crt", "pki/etcd/peer.crt", "pki/apiserver-kubelet-client.crt", "admin.conf", "scheduler.conf"]:
        if f not in mine or mine[f]["is_ca"] or not lo <= mine[f]["residual_days"] <= hi:
            problems.append("%s %s: %s" % (m, f, mine.get(f)))
print("\n".join(problems) or "ok")
PY2
}
EXPIRY=$(expiry_ok 363 365)
check "kiln cert check-expiration lists every master's CAs (10 years) and leaves (1 year)" \
  bash -c "[ $rc = 0 ] && grep -q 'pki/apiserver.crt' '$WORK/expiry.txt' && [ '$EXPIRY' = ok ]"
[ "$EXPIRY" = ok ] || { cat "$WORK/expiry.err"; echo "$EXPIRY"; }
OLD_END=$(served_cert "$H3" -enddate)
kiln cert renew -f "$WORK/Clusterfile" "${KH[@]}" --cert-validity 730 > "$WORK/renew.out" 2>&1; rc=$?
check "kiln cert renew --cert-validity 730 succeeds" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/renew.out"
kiln cert check-expiration -f "$WORK/Clusterfile" "${KH[@]}" --json > "$WORK/expiry.json" 2>> "$WORK/expiry.err"
EXPIRY=$(expiry_ok 728 730)
check "after renew every master's leaves last 2 years and its CAs still 10" [ "$EXPIRY" = ok ]
[ "$EXPIRY" = ok ] || echo "$EXPIRY"
served_for_2y() {
  local m end; for m in "$H1" "$H3" "$H4"; do
    end=$(served_cert "$m" -enddate | cut -d= -f2) || return 1
    [ -n "$end" ] && [ "$(( ($(date -d "$end" +%s) - $(date +%s)) / 86400 ))" -ge 728 ] || { echo "  $m serves until $end" >&2; return 1; }
  done
}
check "every apiserver serves its renewed certificate (was: ${OLD_END#notAfter=})" served_for_2y
for h in kiln-h1 kiln-h3 kiln-h4; do on "$h" -- cat /var/log/fake-kube/calls.log > "$WORK/calls-$h.log" 2>/dev/null; done
python3 - "$WORK" > "$WORK/restarts.out" 2>&1 <<'PY2'
import glob, json, sys
calls = []
for path in glob.glob(sys.argv[1] + "/calls-kiln-h[134].log"):
    calls += [json.loads(l) for l in open(path) if l.strip()]
restarts = sorted((c["t"], c["host"]) for c in calls if c["event"] == "restart" and c["argv"] == ["kube-apiserver"])
hosts = [h for _, h in restarts]
print("ok" if sorted(set(hosts)) == ["kiln-h1", "kiln-h3", "kiln-h4"] and len(hosts) == 3 else "apiserver restarts: %s" % restarts)
PY2
check "the kubelets restarted each master's apiserver once, one master after another" grep -qx ok "$WORK/restarts.out"
grep -qx ok "$WORK/restarts.out" || cat "$WORK/restarts.out"
check "the cluster still answers with the renewed admin.conf (5 nodes)" bash -c "
  '$HOSTS' ssh kiln-h3 -- kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json | python3 -c 'import json,sys; sys.exit(len(json.load(sys.stdin)[\"items\"]) != 5)'"
kiln cert --alt-names alt.e2e.example,192.0.2.20 -f "$WORK/Clusterfile" "${KH[@]}" > "$WORK/alt.out" 2>&1; rc=$?
check "kiln cert --alt-names succeeds" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/alt.out"
alt_names_served() {
  local m sans end; for m in "$H1" "$H3" "$H4"; do
    sans=$(served_cert "$m" -ext subjectAltName) || return 1
    end=$(served_cert "$m" -enddate | cut -d= -f2) || return 1
    [ "$(( ($(date -d "$end" +%s) - $(date +%s)) / 86400 ))" -ge 728 ] || { echo "  $m: new names cut the validity to $end" >&2; return 1; }
    for want in DNS:alt.e2e.example "IP Address:192.0.2.20" DNS:kube.e2e.example "IP Address:$m"; do
      grep -q "$want" <<< "$sans" || { echo "  $m lacks $want: $sans" >&2; return 1; }
    done
  done
}
check "every apiserver serves the new names beside the Clusterfile's certSANs, still valid 2 years" alt_names_served
kiln cert --alt-names 'not a name!' -f "$WORK/Clusterfile" "${KH[@]}" > "$WORK/alt-bad.out" 2>&1; rc=$?
check "a bad alt name is refused before anything changes" bash -c "[ $rc != 0 ] && grep -q 'neither a DNS name nor an IP address' '$WORK/alt-bad.out'"

# --- a run on the finished cluster changes nothing ------------------------------------------------
"${RUN[@]}" > "$WORK/again.out" 2>&1; rc=$?
inits=$(on kiln-h1 -- "grep -c '\"event\": \"call\", \"argv\": \\[\"init\", \"--config\"' /var/log/fake-kube/calls.log")
joins=$(on kiln-h2 -- "grep -c '\"event\": \"call\", \"argv\": \\[\"join\"' /var/log/fake-kube/calls.log")
check "a run on the finished cluster succeeds without kubeadm init or join again" bash -c "[ '$rc' = 0 ] && [ '$inits' = 1 ] && [ '$joins' = 1 ]"

# --- scale: a worker joins while another is unreachable; a master joins; a master and a worker leave
node_names() { on kiln-h1 -- kubectl get nodes -o json | python3 -c 'import json,sys; print(" ".join(sorted(n["metadata"]["name"] for n in json.load(sys.stdin)["items"] if [c for c in n["status"]["conditions"] if c["type"] == "Ready" and c["status"] == "True"])))'; }
ipvs_lists() { # WORKER MASTER_IP...: the worker's virtual server has exactly these masters
  local out m; out=$(on "$1" -- ipvsadm -Ln) || return 1
  for m in "${@:2}"; do grep -q -- "-> $m:6443" <<< "$out" || { echo "  $1 lacks $m: $out" >&2; return 1; }; done
  [ "$(grep -c -- '-> .*:6443' <<< "$out")" = "$(( $# - 1 ))" ] || { echo "  $1 lists more: $out" >&2; return 1; }
}
"$HOSTS" partition kiln-h5 > /dev/null
kiln scale-up -n "$H7" --pk "$KEY" "${KH[@]}" --accept-new-host-keys --wait-ready 120 --json > "$WORK/up-worker.json" 2> "$WORK/up-worker.err"; rc=$?
"$HOSTS" heal kiln-h5 > /dev/null
check "a worker joins while an existing worker (kiln-h5) is unreachable" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/up-worker.err"
check "the new worker's virtual server lists the three masters" ipvs_lists kiln-h7 "$H1" "$H3" "$H4"
check "no existing host was sent rootfs bytes, the new worker was" python3 -c "
import json, sys; d = json.load(open('$WORK/up-worker.json'))['distributed']
sys.exit(not (list(d) == ['$H7'] and d['$H7']['bytes_sent'] > 0))"
kiln scale-up -m "$H6" --pk "$KEY" "${KH[@]}" --accept-new-host-keys --wait-ready 120 > "$WORK/up-master.out" 2>&1; rc=$?
check "a master joins" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/up-master.out"
check "every worker's virtual server now lists four masters" bash -c "$(declare -f on ipvs_lists); HOSTS='$HOSTS'
  for w in kiln-h2 kiln-h5 kiln-h7; do ipvs_lists \$w $H1 $H3 $H4 $H6 || exit 1; done"
check "7 nodes Ready" [ "$(node_names)" = "kiln-h1 kiln-h2 kiln-h3 kiln-h4 kiln-h5 kiln-h6 kiln-h7" ]
check "the new master is labelled and serves the API" bash -c "
  '$HOSTS' ssh kiln-h1 -- kubectl get nodes kiln-h6 -o json | grep -q 'node-role.kubernetes.io/control-plane' &&
  '$HOSTS' ssh kiln-h6 -- kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json | grep -q kiln-h7"
kiln scale-down -m "$H4" -n "$H7" "${KH[@]}" > "$WORK/down.out" 2>&1; rc=$?
check "a master and a worker leave" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/down.out"
check "5 nodes remain" [ "$(node_names)" = "kiln-h1 kiln-h2 kiln-h3 kiln-h5 kiln-h6" ]
check "the workers' virtual servers follow: the three remaining masters" bash -c "$(declare -f on ipvs_lists); HOSTS='$HOSTS'
  ipvs_lists kiln-h2 $H1 $H3 $H6 && ipvs_lists kiln-h5 $H1 $H3 $H6"
check "the hosts that left are as before the run" bash -c "[ '$BEFORE_H4' = '$(snapshot kiln-h4)' ] && [ '$BEFORE_H7' = '$(snapshot kiln-h7)' ]"
check "the leaving nodes were drained before they were reset" bash -c "
  '$HOSTS' ssh kiln-h1 -- cat /var/log/fake-kube/calls.log | grep -c '\"drain\"' | grep -qx 2"

# --- delete leaves the hosts as they were -------------------------------------------------------
kiln delete --cluster e2e-kube --known-hosts "$WORK/known_hosts" > "$WORK/delete.out" 2>&1; rc=$?
check "kiln delete succeeds" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -20 "$WORK/delete.out"
AFTER=$(snapshot "${ALL[@]}")
check "after delete the hosts are as before the run (files, modes, contents, sysctls)" [ "$BEFORE" = "$AFTER" ]
check "no kubelet, IPVS service or VIP link is left" bash -c "
  for h in ${ALL[*]} kiln-h6 kiln-h7; do '$HOSTS' ssh \$h -- '! systemctl is-active --quiet kubelet && ! ip link show kiln-ipvs0 >/dev/null 2>&1' || exit 1; done"

finish

#!/usr/bin/env bash
# e2e: scaling the etcd demo (shell runtime, real etcd) on mixed architectures.
#
# 3 members (kiln-h1..h3) → `kiln scale-up -m h4,h5` (one amd64, one arm64). The first try loses
# kiln-h5 (powered off) while it joins: the scale-up fails naming the host and phase, and the
# existing hosts are unchanged (listing before/after); the host back, the same command
# completes: 5 healthy members, data written before still there, and the existing hosts were
# sent no rootfs bytes (kiln's count and bytes on their veths are printed). Then
# `kiln scale-down -m h1,h2`, master0 among them: master0 moves to kiln-h3, 3 healthy members,
# the data still there, and the hosts that left are as before the run, with the state taken
# from master0 (this machine's copy removed). `kiln apply` brings the old master0 back and removes
# a member. The bundled etcd-backup plugin saved a snapshot before each change, brought back to
# this machine. `kiln delete` ends it.
# Prints `N passed, N failed`.
#
#   e2e/test-scale.sh KILN_BINARY
set -uo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
WORK=$(mktemp -d /tmp/kiln-e2e-scale.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/e2e/lib.sh"
export KILN_ROOT=$WORK/store
KH=(--known-hosts "$WORK/known_hosts" --accept-new-host-keys)

build_demo_images "$KILN" || { echo "0 passed, 1 failed (demo images did not build)"; exit 1; }
"$HOSTS" up --hosts 5 --arch amd64,amd64,arm64,amd64,arm64 >/dev/null || { echo "0 passed, 1 failed (hosts did not come up)"; exit 1; }
INV=$("$HOSTS" inventory)
KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ssh_key"])' "$INV")
H1=$(ip_of kiln-h1); H2=$(ip_of kiln-h2); H3=$(ip_of kiln-h3); H4=$(ip_of kiln-h4); H5=$(ip_of kiln-h5)
wire() { cat "/sys/class/net/kv-${1#kiln-}/statistics/tx_bytes"; }
etcd() { on "$1" -- "ETCDCTL_API=3 etcdctl --endpoints http://$(ip_of "$1"):2379 ${*:2}"; }
healthy() { # HOST COUNT: COUNT members, every one healthy
  local out; out=$(etcd "$1" endpoint health --cluster 2>&1)
  [ "$(grep -c 'is healthy' <<< "$out")" = "$2" ] && [ "$(etcd "$1" member list | wc -l)" = "$2" ] || { echo "$out" >&2; return 1; }
}

# The demo image with the bundled etcd-backup plugin (snapshots before every change).
mkdir -p "$WORK/backup-ctx/plugins"
cp -a "$ROOT/plugins/etcd-backup" "$WORK/backup-ctx/plugins/"
printf 'FROM kiln-demo/etcd:1\nCOPY plugins plugins\n' > "$WORK/backup-ctx/Kubefile"
"$KILN" build -q -t kiln-demo/etcd-backup:1 --build-mode lite --platform linux/amd64,linux/arm64 "$WORK/backup-ctx" >/dev/null \
  || { echo "0 passed, 1 failed (etcd-backup image build)"; exit 1; }
demo_clusterfile "$WORK/Clusterfile"
sed -i 's|image: kiln-demo/etcd:1|image: kiln-demo/etcd-backup:1|' "$WORK/Clusterfile"
BEFORE_RUN=$(snapshot kiln-h1 kiln-h2)
"$KILN" run -f "$WORK/Clusterfile" "${KH[@]}" > "$WORK/run.out" 2>&1; rc=$?
delivered() { [ "$rc" = 0 ] && healthy kiln-h1 3; }
check "kiln run delivers 3 etcd members" delivered
[ "$rc" = 0 ] || tail -20 "$WORK/run.out"
etcd kiln-h2 put kiln-e2e/before-scaling "'written by 3 members'" > /dev/null

# --- scale-up, first try: a joining host loses power ------------------------------------------
EXISTING=$(listing kiln-h1 kiln-h2 kiln-h3)
declare -A WIRE_BEFORE
for h in kiln-h1 kiln-h2 kiln-h3 kiln-h4 kiln-h5; do WIRE_BEFORE[$h]=$(wire "$h"); done
UP=("$KILN" scale-up -m "$H4,$H5" --pk "$KEY" "${KH[@]}" --json)
"${UP[@]}" > "$WORK/up1.json" 2> "$WORK/up1.err" & pid=$!
# kiln-h4 joins first (masters join one at a time); kiln-h5 is switched off as its turn comes.
for _ in $(seq 600); do
  grep -q "etcd member etcd-${H4//./-} joined" "$KILN_ROOT/clusters/demo/run.log" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
"$HOSTS" stop kiln-h5 > /dev/null
wait "$pid"; rc=$?
check "a joining host powered off: scale-up fails naming the host and the phase" bash -c "[ $rc != 0 ] && grep -q \"phase \\\`bring-up\\\` failed on $H5\" '$WORK/up1.err'"
[ "$rc" != 0 ] && grep -q "failed on $H5" "$WORK/up1.err" || tail -n 15 "$WORK/up1.err"
check "the existing hosts are unchanged (listing before and after)" [ "$EXISTING" = "$(listing kiln-h1 kiln-h2 kiln-h3)" ]
check "the saved Clusterfile does not list the joining hosts yet" bash -c "! grep -q '$H4\|$H5' '$KILN_ROOT/clusters/demo/Clusterfile'"
"$HOSTS" start kiln-h5 > /dev/null

# --- the same command again completes ----------------------------------------------------------
"${UP[@]}" > "$WORK/up2.json" 2> "$WORK/up2.err"; rc=$?
check "the same scale-up again completes" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/up2.err"
check "5 members, all healthy (2 of them arm64)" healthy kiln-h5 5
readable() { etcd "$1" get kiln-e2e/before-scaling | grep -qx 'written by 3 members'; }
check "the data written before scaling is readable on a new member" readable kiln-h4
arch_of() { on "$1" -- 'etcd --version 2>/dev/null | sed -n "s/.*OS\/Arch: //p"'; }
check "each new member runs its own architecture's etcd" bash -c "[ '$(arch_of kiln-h4)' = linux/amd64 ] && [ '$(arch_of kiln-h5)' = linux/arm64 ]"
echo "  per host: rootfs bytes kiln sent (first try, second try); bytes on the wire over both:"
for h in kiln-h1 kiln-h2 kiln-h3 kiln-h4 kiln-h5; do
  ip=$(ip_of "$h")
  sent() { python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1])).get("distributed", {}).get(sys.argv[2], {}).get("bytes_sent", 0))
except ValueError: print("-")' "$1" "$ip"; }
  echo "    $h: $(sent "$WORK/up1.json"), $(sent "$WORK/up2.json"); $(( $(wire "$h") - ${WIRE_BEFORE[$h]} )) on the wire"
done
python3 - "$WORK/up1.json" "$WORK/up2.json" "$H1" "$H2" "$H3" "$H4" "$H5" > "$WORK/bytes.out" 2>&1 <<'PY'
import json, sys
runs = []
for path in sys.argv[1:3]:
    try:
        runs.append(json.load(open(path)).get("distributed", {}))
    except ValueError:
        runs.append({})
existing, new = sys.argv[3:6], sys.argv[6:8]
problems = ["%s (existing) was sent rootfs bytes" % h for run in runs for h in existing if h in run]
total = {h: sum(run.get(h, {}).get("bytes_sent", 0) for run in runs) for h in new}
problems += ["%s (new) got no rootfs" % h for h, n in total.items() if n == 0 and h not in runs[1]]
print("\n".join(problems) or "ok")
PY
check "existing hosts were sent no rootfs bytes (both tries); the new ones got theirs" grep -qx ok "$WORK/bytes.out"
grep -qx ok "$WORK/bytes.out" || cat "$WORK/bytes.out"
on_wire() { echo $(( $(wire "$1") - ${WIRE_BEFORE[$1]} )); }
on_wire_ok() {
  for h in kiln-h1 kiln-h2 kiln-h3; do [ "$(on_wire "$h")" -lt 4000000 ] || return 1; done
  for h in kiln-h4 kiln-h5; do [ "$(on_wire "$h")" -gt 30000000 ] || return 1; done
}
check "on the wire: under 4 MB to each existing host (commands, etcd), over 30 MB (the rootfs) to each new one" on_wire_ok
"$KILN" scale-up -m "$H4" --pk "$KEY" "${KH[@]}" > /dev/null 2> "$WORK/up-again.err"; rc=$?
check "adding a host that is already in the cluster is refused" bash -c "[ $rc = 1 ] && grep -q 'listed twice' '$WORK/up-again.err'"

# --- scale-down 5 → 3, master0 among the leaving ----------------------------------------------
# This machine forgets the cluster: the state comes from master0's copy.
mv "$KILN_ROOT/clusters/demo" "$WORK/state-elsewhere"
"$KILN" scale-down --from-master0 "$H1" --pk "$KEY" -m "$H1,$H2" "${KH[@]}" > "$WORK/down.out" 2>&1; rc=$?
check "with no state on this machine, scale-down takes it from master0" grep -q "Took the state of cluster \`demo\` from master0 $H1" "$WORK/down.out"
private_state() {
  local modes; modes=$(stat -c %a "$KILN_ROOT/clusters/demo/Clusterfile" "$KILN_ROOT/clusters/demo/registry/ca.key") &&
    [ "$(sort -u <<< "$modes")" = 600 ]
}
check "the state taken from master0 (with the registry's CA) is private (0600)" private_state
check "scale-down of 2 members, master0 among them, succeeds" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/down.out"
check "master0 moved to kiln-h3" grep -q "master0 is now $H3" "$WORK/down.out"
check "3 members remain, all healthy" healthy kiln-h3 3
check "the data written before scaling is still readable (arm64 member)" readable kiln-h5
check "the saved Clusterfile lists the 3 remaining hosts, kiln-h3 first" bash -c "
  f='$KILN_ROOT/clusters/demo/Clusterfile'; ! grep -q '$H1\|$H2' \"\$f\" && grep -q '$H4' \"\$f\" && grep -q '$H5' \"\$f\""
check "the hosts that left are as before the run" [ "$BEFORE_RUN" = "$(snapshot kiln-h1 kiln-h2)" ]
"$KILN" scale-down -m "$H3,$H4,$H5" "${KH[@]}" > /dev/null 2> "$WORK/last.err"; rc=$?
check "removing the last master is refused" bash -c "[ $rc = 1 ] && grep -q 'leave no master' '$WORK/last.err'"
"$KILN" exec --cluster demo "${KH[@]}" -- 'systemctl is-active kiln-etcd' > "$WORK/exec.out" 2>&1
check "kiln exec on the new cluster reaches the 3 remaining members" bash -c "[ \$(grep -c '| active' '$WORK/exec.out') = 3 ]"

# --- kiln apply: the cluster made to match a Clusterfile; a removed master0 joins again ----------
cat > "$WORK/Clusterfile.apply" <<CF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: demo
spec:
  image: kiln-demo/etcd-backup:1
  hosts:
    - ips: [$H3]
      roles: [master]
      ssh: {user: ops, pk: $KEY, passwd: kiln-e2e-ops}
    - ips: [$H4, $H1]
      roles: [master]
      ssh: {user: root, pk: $KEY}
CF
"$KILN" apply -f "$WORK/Clusterfile.apply" "${KH[@]}" --dry-run > "$WORK/apply-dry.out" 2>&1; rc=$?
check "kiln apply --dry-run shows who joins and who leaves, and changes nothing" bash -c "[ $rc = 0 ] &&
  grep -q '$H1 .*join as master' '$WORK/apply-dry.out' && grep -q '$H5 .*leave' '$WORK/apply-dry.out' &&
  ! '$HOSTS' ssh kiln-h1 -- test -e /var/lib/kiln/data"
"$KILN" apply -f "$WORK/Clusterfile.apply" "${KH[@]}" > "$WORK/apply.out" 2>&1; rc=$?
check "kiln apply adds the old master0 back and removes kiln-h5" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/apply.out"
members() { etcd kiln-h3 member list | awk -F', ' '{print $4}' | sort | tr '\n' ' '; }
members_ok() { [ "$(members)" = "http://$H1:2380 http://$H3:2380 http://$H4:2380 " ] && healthy kiln-h3 3; }
check "etcd members follow the Clusterfile (kiln-h1, kiln-h3, kiln-h4), all healthy" members_ok
check "and the data is still there" readable kiln-h1

# --- a member that cannot be reached: refused, then taken out with --force --------------------
"$HOSTS" stop kiln-h4 > /dev/null
"$KILN" scale-down -m "$H4" "${KH[@]}" --connect-timeout 5 > "$WORK/gone.out" 2>&1; rc=$?
check "removing an unreachable member is refused and changes nothing" bash -c "[ $rc != 0 ] &&
  grep -q 'cannot reach $H4; nothing was changed' '$WORK/gone.out' && grep -q '$H4' '$KILN_ROOT/clusters/demo/Clusterfile'"
"$KILN" scale-down -m "$H4" "${KH[@]}" --connect-timeout 5 --force > "$WORK/forced.out" 2>&1; rc=$?
check "with --force it is taken out of the cluster and reported as not cleaned" bash -c "[ $rc = 0 ] &&
  grep -q '$H4 was taken out of the cluster but not cleaned' '$WORK/forced.out' && ! grep -q '$H4' '$KILN_ROOT/clusters/demo/Clusterfile'"
[ "$rc" = 0 ] || tail -n 15 "$WORK/forced.out"
check "its etcd member was removed through master0: 2 healthy members" healthy kiln-h3 2
check "and the data is still there" readable kiln-h1

"$KILN" delete --cluster demo --known-hosts "$WORK/known_hosts" > "$WORK/delete.out" 2>&1
check "kiln delete removes the rest" [ $? = 0 ]

# --- the etcd-backup plugin's snapshots, brought back to this machine --------------------------
ETCDCTL=$ROOT/kubefiles/etcd/bin/amd64/etcdctl
# (The first ones were saved to the state this machine then forgot, in state-elsewhere/.)
find "$WORK/state-elsewhere/plugins/etcd-backup" "$KILN_ROOT/clusters/demo/plugins/etcd-backup" -name '*.db' 2>/dev/null | sort > "$WORK/snapshots.txt"
sed 's|.*/etcd-backup/|  snapshot: |' "$WORK/snapshots.txt"
python3 - "$WORK/snapshots.txt" "$H1" "$H2" "$H3" "$H5" > "$WORK/snapshots.out" <<'PY'
import os, sys
names = [os.path.basename(l.strip()) for l in open(sys.argv[1]) if l.strip()]
h1, h2, h3, h5 = sys.argv[2:6]
want = {"etcd-%s-pre-scaleup.db" % h1,               # before h4, h5 joined (master0)
        "etcd-%s-pre-clean-host.db" % h1, "etcd-%s-pre-clean-host.db" % h2,   # leaving masters
        "etcd-%s-pre-scaleup.db" % h3, "etcd-%s-pre-clean-host.db" % h5,      # kiln apply
        "etcd-%s-pre-uninstall.db" % h3}              # delete: once, on master0
missing = sorted(want - set(names))
extra = [n for n in names if n not in want]
print("ok" if not missing and not extra else "missing %s, unexpected %s" % (missing, extra))
PY
check "etcd-backup saved a snapshot before each change, on this machine (delete: once, from master0)" grep -qx ok "$WORK/snapshots.out"
grep -qx ok "$WORK/snapshots.out" || cat "$WORK/snapshots.out"
statuses_ok() {
  local f; while read -r f; do
    "$ETCDCTL" snapshot status "$f" -w json > "$WORK/status.json" 2>/dev/null || { echo "  not a snapshot: $f" >&2; return 1; }
    python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["totalKey"] < 2)' "$WORK/status.json" || return 1
  done < "$WORK/snapshots.txt"
  [ -s "$WORK/snapshots.txt" ] && [ "$(xargs stat -c %a < "$WORK/snapshots.txt" | sort -u)" = 600 ]
}
check "every snapshot passes etcdctl snapshot status, holds the cluster's keys, and is 0600" statuses_ok
"$HOSTS" down >/dev/null 2>&1
finish

#!/usr/bin/env bash
# e2e: `kiln run` of a small multi-arch `shell`-runtime image (e2e/images/shell-e2e) onto the
# test hosts (2 amd64 + 1 arm64; root by password, a key-only sudo user, a sudo-with-password
# user): dry run changes nothing; each host gets its own architecture's rootfs; scripts run in
# order with the cluster env (master0, then masters one at a time, then nodes); a failure stops
# the run naming phase and host and `kiln status` shows it; the next run resumes without
# re-sending or re-running finished steps; a run on the finished cluster sends nothing. Then how
# layers travel: a corrupt layer in the local store is caught by kiln's check of its digest
# (nothing swapped in, nothing kept); `--no-layer-cache` keeps only markers; `--layer-transfer raw`;
# `--layer-transfer recompressed` (kept as zstd, a lost rootfs rebuilt from it).
# Prints `N passed, N failed`.
#
#   e2e/test-run.sh KILN_BINARY
set -uo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
WORK=$(mktemp -d /tmp/kiln-e2e-run.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/e2e/lib.sh"
kiln() { "$KILN" --root "$WORK/store" "$@"; }

up_hosts

kiln -q build --build-mode lite --platform linux/amd64,linux/arm64 -t e2e/shell:1 "$ROOT/e2e/images/shell-e2e" >/dev/null \
  || { echo "0 passed, 1 failed (image build)"; exit 1; }
cat > "$WORK/Clusterfile" <<EOF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: e2e-run
spec:
  image: e2e/shell:1
  env: [Greeting=hello]
  ssh:
    user: root
    passwd: kiln-e2e-root
  hosts:
    - ips: [$H1, $H2]
      roles: [master]
    - ips: [$H3]
      roles: [node]
      ssh:
        user: ops
        passwd: kiln-e2e-ops
EOF
BEFORE=$(snapshot kiln-h1 kiln-h2 kiln-h3)
RUN=(kiln run -f "$WORK/Clusterfile" --known-hosts "$WORK/known_hosts" --accept-new-host-keys)
data_dirs_absent() { for h in kiln-h1 kiln-h2 kiln-h3; do on "$h" -- test ! -e /var/lib/kiln/data || return 1; done; }

# --- dry run ----------------------------------------------------------------------------------
"${RUN[@]}" --dry-run > "$WORK/dry.out" 2>&1
check "dry run succeeds and prints a plan per host" bash -c "grep -q '$H3 .*node .*linux/arm64' '$WORK/dry.out' && grep -q '$H1 .*master .*linux/amd64' '$WORK/dry.out'"
check "dry run changes nothing on any host" data_dirs_absent

# --- a failing bring-up stops the run, status shows it -------------------------------------------
on kiln-h1 -- touch /tmp/kiln-e2e-fail-init
"${RUN[@]}" > "$WORK/fail.out" 2>&1; rc=$?
check "a failing init-master0.sh stops the run (exit 1)" [ "$rc" = 1 ]
check "the error names the phase and the host" grep -q "phase \`bring-up\` failed on $H1" "$WORK/fail.out"
check "the script's output is shown" grep -q "init-master0: asked to fail" "$WORK/fail.out"
kiln status e2e-run > "$WORK/status1.out" 2>&1
check "kiln status shows distribution done and bring-up failed" bash -c "grep -q 'incomplete' '$WORK/status1.out' && grep -q '$H1 .*done .*FAILED' '$WORK/status1.out'"
check "the effective Clusterfile was saved (mode 0600)" [ "$(stat -c %a "$WORK/store/clusters/e2e-run/Clusterfile")" = 600 ]

# --- resume --------------------------------------------------------------------------------------
on kiln-h1 -- rm -f /tmp/kiln-e2e-fail-init
"${RUN[@]}" --json > "$WORK/resume.json" 2> "$WORK/resume.err"; rc=$?
check "the next run completes" [ "$rc" = 0 ]
sent() { python3 -c 'import json,sys; print(sum(h["bytes_sent"] for h in json.load(open(sys.argv[1]))["distributed"].values()))' "$1"; }
check "resuming sends no rootfs bytes" [ "$(sent "$WORK/resume.json")" = 0 ]
log() { on "$1" -- cat /var/lib/kiln-e2e-shell/log; }
log kiln-h1 > "$WORK/h1.log"; log kiln-h2 > "$WORK/h2.log"; log kiln-h3 > "$WORK/h3.log"
check "container runtime installed once per host (not repeated on resume)" bash -c "for f in h1 h2 h3; do [ \$(grep -c ' container-runtime ' '$WORK/'\$f.log) = 1 ] || exit 1; done"
check "each host ran its own architecture's rootfs" bash -c "grep -q 'arch=amd64' '$WORK/h1.log' && grep -q 'arch=amd64' '$WORK/h2.log' && grep -q 'arch=arm64' '$WORK/h3.log' && ! grep -q arm64 '$WORK/h1.log'"
check "master0 initialised, the other master joined, the node joined" bash -c "grep -q ' init-master0 host=$H1 role=master master0=$H1 masters=$H1,$H2 nodes=$H3 cluster=e2e-run' '$WORK/h1.log' && grep -q ' join-master host=$H2 role=master' '$WORK/h2.log' && grep -q ' join-node host=$H3 role=node' '$WORK/h3.log'"
order_ok() {
  local init join node
  init=$(awk '/ init-master0 /{print $1}' "$WORK/h1.log"); join=$(awk '/ join-master /{print $1}' "$WORK/h2.log"); node=$(awk '/ join-node /{print $1}' "$WORK/h3.log")
  python3 -c "import sys; a,b,c=map(float,sys.argv[1:]); sys.exit(0 if a < b < c else 1)" "$init" "$join" "$node"
}
check "order: master0, then masters, then nodes" order_ok
check "the app ran once, on master0 only" bash -c "[ \$(grep -c ' app ' '$WORK/h1.log') = 1 ] && ! grep -q ' app ' '$WORK/h2.log' '$WORK/h3.log'"
live() {
  python3 - "$WORK/store/clusters/e2e-run/run.log" <<'PY'
import sys, datetime
seen = {}
for line in open(sys.argv[1]):
    for mark in ("join-node: started", "join-node: finished"):
        if mark in line:
            seen[mark] = datetime.datetime.strptime(line.split()[0], "%H:%M:%S")
gap = (seen["join-node: finished"] - seen["join-node: started"]).total_seconds()
sys.exit(0 if gap >= 2 else 1)
PY
}
check "script output is shown line by line as it is printed (run log times 3 s apart)" live
kiln status e2e-run > "$WORK/status2.out" 2>&1
check "kiln status shows the cluster complete" grep -q "complete (" "$WORK/status2.out"
check "master0 keeps a copy of the journal" on kiln-h1 -- test -s /var/lib/kiln/data/e2e-run/.kiln/journal.json

# --- run again on the finished cluster -----------------------------------------------------------
t0=$(date +%s.%N)
"${RUN[@]}" --json > "$WORK/again.json" 2>/dev/null; rc=$?
t1=$(date +%s.%N)
check "running again on the finished cluster succeeds" [ "$rc" = 0 ]
check "and sends no rootfs bytes" [ "$(sent "$WORK/again.json")" = 0 ]
inits=$(on kiln-h1 -- grep -c ' init-master0 ' /var/lib/kiln-e2e-shell/log)
check "and re-runs no finished script" [ "$inits" = 1 ]
echo "  re-run on the finished cluster: $(echo "$t1 - $t0" | bc) s"
check "secrets never appear in output or the run log" bash -c "! grep -rq -e kiln-e2e-root -e kiln-e2e-ops '$WORK'/*.out '$WORK'/*.err '$WORK/store/clusters/e2e-run/run.log'"

# --- kiln exec: one command on many hosts, output prefixed, exit codes per host ----------------
EXEC=(kiln exec --cluster e2e-run --known-hosts "$WORK/known_hosts")
"${EXEC[@]}" -- 'echo "arch=$(uname -m) uid=$(id -u)"' > "$WORK/exec.out" 2> "$WORK/exec.err"; rc=$?
check "kiln exec runs on every host as root, output prefixed by host (arm64 through sudo)" bash -c "[ $rc = 0 ] &&
  grep -qx '$H1 | arch=x86_64 uid=0' '$WORK/exec.out' && grep -qx '$H2 | arch=x86_64 uid=0' '$WORK/exec.out' &&
  grep -qx '$H3 | arch=aarch64 uid=0' '$WORK/exec.out'"
[ "$rc" = 0 ] || cat "$WORK/exec.out" "$WORK/exec.err"
"${EXEC[@]}" -r node -- hostname > "$WORK/exec-node.out" 2>/dev/null
check "kiln exec -r node runs only on nodes" bash -c "[ \"\$(cat '$WORK/exec-node.out')\" = '$H3 | kiln-h3' ]"
"${EXEC[@]}" --json -- 'test "$(hostname)" != kiln-h2' > "$WORK/exec.json" 2> "$WORK/exec-fail.err"; rc=$?
check "a command failing on one host: exit 1, each host's exit code in the JSON" bash -c "[ $rc = 1 ] &&
  python3 -c 'import json,sys; r={h[\"host\"]: h[\"exit_code\"] for h in json.load(open(sys.argv[1]))}; sys.exit(r != {\"$H1\": 0, \"$H2\": 1, \"$H3\": 0})' '$WORK/exec.json' &&
  grep -q 'failed on 1 of 3 hosts' '$WORK/exec-fail.err'"
"${EXEC[@]}" --hosts 10.213.0.250 -- true > /dev/null 2> "$WORK/exec-stranger.err"; rc=$?
check "kiln exec refuses a host outside the cluster" bash -c "[ $rc = 1 ] && grep -q 'not a host of this cluster' '$WORK/exec-stranger.err'"

# --- tuning was applied, and delete puts everything back ----------------------------------------
check "the image's sysctls were applied" bash -c "[ \"\$('$HOSTS' ssh kiln-h3 -- sysctl -n net.core.somaxconn)\" = 1234 ]"
kiln delete -f "$WORK/Clusterfile" --known-hosts "$WORK/known_hosts" > "$WORK/delete.out" 2>&1; rc=$?
check "kiln delete succeeds" [ "$rc" = 0 ]
check "delete ran the image's clean.sh" bash -c "! '$HOSTS' ssh kiln-h1 -- test -e /var/lib/kiln-e2e-shell"
AFTER=$(snapshot kiln-h1 kiln-h2 kiln-h3)
check "hosts are as before run (paths, contents, sysctls)" [ "$BEFORE" = "$AFTER" ]
check "the cluster's state on this machine is gone" [ ! -e "$WORK/store/clusters/e2e-run/journal.json" ]

# --- how layers travel and stay: kept (default), not kept, raw, recompressed; a corrupt blob here
sed 's/name: e2e-run/name: e2e-modes/' "$WORK/Clusterfile" > "$WORK/Clusterfile.modes"
MODES=(kiln run -f "$WORK/Clusterfile.modes" --known-hosts "$WORK/known_hosts" --json)
MODES_DELETE=(kiln delete -f "$WORK/Clusterfile.modes" --known-hosts "$WORK/known_hosts")
MODES_DIR=/var/lib/kiln/data/e2e-modes
held() { for h in kiln-h1 kiln-h2 kiln-h3; do on "$h" -- "ls $MODES_DIR/.kiln/blobs"; done; }
# Every gzip layer in this machine's store damaged (same size): only a check of its digest sees it.
mapfile -t layers < <(for b in "$WORK"/store/oci/blobs/sha256/*; do [ "$(head -c2 "$b" | od -An -tx1 | tr -d ' ')" = 1f8b ] && echo "$b"; done)
mkdir -p "$WORK/good-blobs"; cp -p "${layers[@]}" "$WORK/good-blobs/"
for b in "${layers[@]}"; do printf 'kiln' | dd of="$b" bs=1 seek=$(( $(stat -c %s "$b") / 2 )) conv=notrunc status=none; done
"${MODES[@]}" > "$WORK/corrupt.json" 2> "$WORK/corrupt.err"; rc=$?
check "a layer that does not match its digest here stops the run, telling what to do" bash -c "
  [ $rc = 1 ] && grep -q 'does not match its digest' '$WORK/corrupt.err' && grep -q 'kiln rmi' '$WORK/corrupt.err'"
no_rootfs_no_blob() {
  for h in kiln-h1 kiln-h2 kiln-h3; do
    on "$h" -- "test ! -e $MODES_DIR/rootfs && ! ls $MODES_DIR/.kiln/blobs | grep -q ." || return 1
  done
}
check "no host got a rootfs or kept the bad blob" no_rootfs_no_blob
cp -p "$WORK"/good-blobs/* "$WORK/store/oci/blobs/sha256/"
"${MODES_DELETE[@]}" >/dev/null 2>&1
"${MODES[@]}" --no-layer-cache > "$WORK/nocache.json" 2> "$WORK/nocache.err"; rc=$?
check "--no-layer-cache: the run completes" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/nocache.err"
check "and the hosts keep no layer, only markers that their rootfs holds them" bash -c "
  $(declare -f on held); HOSTS='$HOSTS'; MODES_DIR=$MODES_DIR
  held > '$WORK/held.txt' && grep -q '\.extracted$' '$WORK/held.txt' && ! grep -qv '\.extracted$' '$WORK/held.txt'"
"${MODES[@]}" > "$WORK/nocache-again.json" 2>/dev/null
check "a run on its finished rootfs sends nothing (with or without the flag)" [ "$(sent "$WORK/nocache-again.json")" = 0 ]
"${MODES_DELETE[@]}" >/dev/null 2>&1
"${MODES[@]}" --layer-transfer raw > "$WORK/raw.json" 2> "$WORK/raw.err"; rc=$?
# sent_as MODE: every host of the run in $WORK/MODE.json got layers that way.
sent_as() {
  python3 - "$WORK/$1.json" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["distributed"]
sys.exit(0 if d and all(h["transfer"] == sys.argv[2] and h["bytes_sent"] > 0 for h in d.values()) else 1)
PY
}
built_for() { on "$1" -- cat "$MODES_DIR/rootfs/bin/built-for"; }
check "--layer-transfer raw: decompressed here, unpacked there, every host its own arch" bash -c "
  [ $rc = 0 ] && $(declare -f sent_as on built_for); WORK='$WORK'; HOSTS='$HOSTS'; MODES_DIR=$MODES_DIR; sent_as raw &&
  [ \"\$(built_for kiln-h1)\" = amd64 ] && [ \"\$(built_for kiln-h3)\" = arm64 ]"
[ "$rc" = 0 ] || tail -n 20 "$WORK/raw.err"
"${MODES_DELETE[@]}" >/dev/null 2>&1
"${MODES[@]}" --layer-transfer recompressed > "$WORK/recompressed.json" 2> "$WORK/recompressed.err"; rc=$?
# Kept as zstd of the tar (named by diff_id), no gzip blob: checked with the host's own zstd.
kept_as_zstd() {
  for h in kiln-h1 kiln-h2 kiln-h3; do
    on "$h" -- "cd $MODES_DIR/.kiln/blobs && ls | grep -q '[.]tar[.]zst\$' && zstd -tq *.tar.zst &&
      for f in *; do [ \"\$(head -c2 \"\$f\" | od -An -tx1 | tr -d ' \n')\" != 1f8b ] || exit 1; done" || return 1
  done
}
check "--layer-transfer recompressed: gzip layers as zstd made here, kept as checksummed <diff_id>.tar.zst, every host its own arch" bash -c "
  [ $rc = 0 ] && $(declare -f sent_as kept_as_zstd on built_for); WORK='$WORK'; HOSTS='$HOSTS'; MODES_DIR=$MODES_DIR;
  sent_as recompressed && kept_as_zstd && [ \"\$(built_for kiln-h2)\" = amd64 ] && [ \"\$(built_for kiln-h3)\" = arm64 ]"
[ "$rc" = 0 ] || tail -n 20 "$WORK/recompressed.err"
# A rootfs lost: rebuilt from the kept zstd files, nothing sent.
on kiln-h3 -- "rm -rf $MODES_DIR/rootfs"
"${MODES[@]}" > "$WORK/recompressed-again.json" 2> "$WORK/recompressed-again.err"; rc=$?
again=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["distributed"]; print(sum(h["bytes_sent"] for h in d.values()), d[sys.argv[2]]["rootfs_extracted"])' \
  "$WORK/recompressed-again.json" "$H3" 2>/dev/null)
check "a lost rootfs is rebuilt from the kept zstd files with nothing sent" bash -c "
  [ $rc = 0 ] && [ '$again' = '0 True' ] && [ \"\$('$HOSTS' ssh kiln-h3 -- cat $MODES_DIR/rootfs/bin/built-for)\" = arm64 ]"
[ "$rc" = 0 ] || tail -n 20 "$WORK/recompressed-again.err"
"${MODES_DELETE[@]}" > "$WORK/modes-delete.out" 2>&1
check "the hosts are as before every run again (paths, contents, sysctls)" [ "$BEFORE" = "$(snapshot kiln-h1 kiln-h2 kiln-h3)" ]

"$HOSTS" down >/dev/null 2>&1
finish

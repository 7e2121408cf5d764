#!/usr/bin/env bash
# e2e: faults during `kiln run`. A host powered off while its rootfs is being sent: the run
# fails naming the host and the phase; once the host is back, the next run resumes and
# completes without re-sending the other hosts' blobs. A host cut off the network during
# bring-up: the same. Prints `N passed, N failed`.
#
#   e2e/test-faults.sh KILN_BINARY
set -uo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
WORK=$(mktemp -d /tmp/kiln-e2e-faults.XXXXXX)
trap 'rm -rf "$WORK"; "$HOSTS" heal kiln-h3 >/dev/null 2>&1 || true' EXIT
. "$ROOT/e2e/lib.sh"
export KILN_ROOT=$WORK/store

up_hosts
# The shell-e2e image plus one 96 MiB layer of random data, so sending takes a few seconds.
cp -r "$ROOT/e2e/images/shell-e2e" "$WORK/ctx"
head -c $((96 << 20)) /dev/urandom > "$WORK/ctx/payload.bin"
sed -i 's/^CMDS /COPY payload.bin payload.bin\nCMDS /' "$WORK/ctx/Kubefile"
"$KILN" -q build --build-mode lite --platform linux/amd64,linux/arm64 -t e2e/faults:1 "$WORK/ctx" >/dev/null \
  || { echo "0 passed, 1 failed (image build)"; exit 1; }
cat > "$WORK/Clusterfile" <<CF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: e2e-faults
spec:
  image: e2e/faults:1
  ssh: {user: root, passwd: kiln-e2e-root}
  hosts:
    - ips: [$H1]
      roles: [master]
    - ips: [$H2, $H3]
      roles: [node]
CF
RUN=("$KILN" run -f "$WORK/Clusterfile" --known-hosts "$WORK/known_hosts" --accept-new-host-keys)
sent_to() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["distributed"].get(sys.argv[2], {}).get("bytes_sent", 0))' "$1" "$2"; }

# --- power loss during distribution ------------------------------------------------------------
"${RUN[@]}" > "$WORK/poweroff.out" 2>&1 &
run_pid=$!
# Wait until h3 is receiving a blob, then pull the plug.
for _ in $(seq 300); do
  on kiln-h3 -- 'ls /var/lib/kiln/data/e2e-faults/.kiln/blobs/ 2>/dev/null' 2>/dev/null | grep -q kiln-part && break
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.1
done
"$HOSTS" stop kiln-h3 >/dev/null
wait "$run_pid"; rc=$?
check "power loss during distribution fails the run (exit 1)" [ "$rc" = 1 ]
check "the error names the phase and the host" grep -q "phase \`distribute\` failed on $H3" "$WORK/poweroff.out"
"$HOSTS" start kiln-h3 >/dev/null
"${RUN[@]}" --json > "$WORK/resume1.json" 2> "$WORK/resume1.err"; rc=$?
check "with the host back, the next run completes" [ "$rc" = 0 ]
check "hosts that had their blobs are sent nothing" bash -c "[ \$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))[\"distributed\"]; print(d[\"$H1\"][\"bytes_sent\"] + d[\"$H2\"][\"bytes_sent\"])' '$WORK/resume1.json') = 0 ]"
check "the powered-off host got its rootfs" on kiln-h3 -- test -s /var/lib/kiln/data/e2e-faults/rootfs/payload.bin
check "no partial upload is left behind" bash -c "! '$HOSTS' ssh kiln-h3 -- ls /var/lib/kiln/data/e2e-faults/.kiln/blobs | grep -q kiln-part"

# --- partition during bring-up --------------------------------------------------------------------
"$KILN" delete --cluster e2e-faults --known-hosts "$WORK/known_hosts" >/dev/null 2>&1
on kiln-h3 -- touch /tmp/kiln-e2e-slow-join
"${RUN[@]}" > "$WORK/partition.out" 2>&1 &
run_pid=$!
for _ in $(seq 300); do on kiln-h3 -- test -e /tmp/kiln-e2e-join-started 2>/dev/null && break; kill -0 "$run_pid" 2>/dev/null || break; sleep 0.2; done
"$HOSTS" partition kiln-h3 >/dev/null
t0=$SECONDS
wait "$run_pid"; rc=$?
echo "  the lost host was detected after $((SECONDS - t0)) s"
check "a partition during bring-up fails the run (exit 1)" [ "$rc" = 1 ]
check "the error names the phase and the host" grep -q "phase \`bring-up\` failed on $H3" "$WORK/partition.out"
"$HOSTS" heal kiln-h3 >/dev/null
on kiln-h3 -- rm -f /tmp/kiln-e2e-slow-join /tmp/kiln-e2e-join-started
"${RUN[@]}" > "$WORK/resume2.out" 2>&1; rc=$?
check "healed, the next run completes" [ "$rc" = 0 ]
check "master0 was not initialised twice" bash -c "[ \$('$HOSTS' ssh kiln-h1 -- grep -c ' init-master0 ' /var/lib/kiln-e2e-shell/log) = 1 ]"
check "the cut-off node joined" bash -c "'$HOSTS' ssh kiln-h3 -- grep -q ' join-node ' /var/lib/kiln-e2e-shell/log"

"$HOSTS" down >/dev/null 2>&1
finish

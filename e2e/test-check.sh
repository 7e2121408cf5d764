#!/usr/bin/env bash
# e2e: `kiln check` (connect + facts + preflight) on the real test hosts: root by password, a
# key-only sudo user, a sudo-with-password user, one arm64 host. Host keys: unknown keys are
# refused with their fingerprint, `--accept-new-host-keys` records them, a changed key is refused.
# Preflight: a duplicate hostname, a skewed clock, a port in use and an image without the host's
# arch are all reported in one table, and no host is changed. A connection refused while sshd
# restarts is retried. Prints `N passed, N failed`.
#
#   e2e/test-check.sh KILN_BINARY
set -uo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
WORK=$(mktemp -d /tmp/kiln-e2e-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/e2e/lib.sh"

up_hosts

# h1: root by password; h2: key-only user with passwordless sudo; h3 (arm64): sudo with password.
cat > "$WORK/Clusterfile" <<EOF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: e2e-check
spec:
  ssh:
    user: root
  hosts:
    - ips: [$H1]
      roles: [master]
    - ips: [$H2]
      roles: [node]
      ssh:
        user: deploy
        pk: $KEY
    - ips: [$H3]
      roles: [node]
      ssh:
        user: ops
EOF
printf 'kiln-e2e-root\n' > "$WORK/root-password"
# The Clusterfile's hosts without their own password get --passwd-file; ops needs its own.
python3 - "$WORK/Clusterfile" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read().replace("        user: ops\n", "        user: ops\n        passwd: kiln-e2e-ops\n")
open(p, "w").write(s)
PY
KH=$WORK/known_hosts
kiln_check() { "$KILN" --root "$WORK/store" check -f "$WORK/Clusterfile" --passwd-file "$WORK/root-password" --known-hosts "$KH" "$@"; }

# --- host keys ------------------------------------------------------------------------------
kiln_check > "$WORK/strict.out" 2>&1; rc=$?
check "unknown host keys are refused (exit 1)" [ "$rc" = 1 ]
fingerprints_shown() {
  for ip in "$H1" "$H2" "$H3"; do
    fp=$(ssh-keyscan -t ed25519 "$ip" 2>/dev/null | ssh-keygen -lf - | awk '{print $2}')
    [ -n "$fp" ] && grep -F "$fp" "$WORK/strict.out" | grep -q -- "--accept-new-host-keys" || { echo "  no fingerprint $fp for $ip" >&2; return 1; }
  done
}
check "each refusal shows the key's SHA256 fingerprint and how to accept it" fingerprints_shown
check "nothing was recorded" [ ! -s "$KH" ]
kiln_check --accept-new-host-keys > "$WORK/accept.out" 2>&1; rc=$?
check "--accept-new-host-keys records the keys and every check passes" [ "$rc" = 0 ]
check "known_hosts holds the 3 hosts' keys" [ "$(ssh-keygen -lf "$KH" | wc -l)" = 3 ]
kiln_check > "$WORK/again.out" 2>&1
check "strict checking passes with recorded keys" [ $? = 0 ]
check "key, password and sudo users all connected" bash -c "[ \$(grep -c ' ssh  *ok ' '$WORK/again.out') = 3 ]"
check "the arm64 host reports arm64" grep -q "$H3 .*ssh .*ok .*arm64" "$WORK/again.out"
cp "$KH" "$WORK/known_hosts.good"
other_key=$(ssh-keygen -q -t ed25519 -N '' -f "$WORK/other" <<<y >/dev/null 2>&1; cut -d' ' -f1,2 "$WORK/other.pub")
grep -v "^$H2 " "$WORK/known_hosts.good" > "$KH"; echo "$H2 $other_key" >> "$KH"
kiln_check --accept-new-host-keys > "$WORK/changed.out" 2>&1; rc=$?
check "a changed host key is refused even with --accept-new-host-keys" bash -c "[ $rc = 1 ] && grep -q 'host key CHANGED' '$WORK/changed.out'"
cp "$WORK/known_hosts.good" "$KH"

# --- a refused connection is retried (sshd restarting) -----------------------------------------
on kiln-h2 -- "systemd-run --quiet --on-active=2 --timer-property=AccuracySec=100ms systemctl start ssh.service && systemctl stop ssh.service"
refused() { ! (exec 3<>"/dev/tcp/$H2/22") 2>/dev/null; }
check "h2's sshd is down for a moment" refused
kiln_check > "$WORK/retry.out" 2>&1
check "kiln connects once it is back (retried, no error)" [ $? = 0 ]

# --- preflight failures, all in one table, nothing changed ------------------------------------
on kiln-h1 -- hostname kiln-h2
on kiln-h1 -- "systemd-run --quiet --unit kiln-e2e-port python3 -c 'import socket,time; s=socket.socket(); s.bind((\"0.0.0.0\",5000)); s.listen(); time.sleep(3600)' && sleep 1"
# A skewed clock: nspawn hosts share this machine's kernel clock (and may not set it), so a
# `date` wrapper that adds 90 s stands in for `date -s` on h3; kiln reads the clock through `date`.
wrapper=$(printf '#!/bin/sh\nexec /bin/date -d "@$(( $(/bin/date +%%s) + 90 ))" "$@"\n' | base64 -w0)
on kiln-h3 -- "echo $wrapper | base64 -d > /usr/local/bin/date && chmod +x /usr/local/bin/date"
# An amd64-only image: h3 (arm64) has no variant in it.
mkdir -p "$WORK/ctx" && printf 'FROM scratch\nCOPY Kubefile .\n' > "$WORK/ctx/Kubefile"
"$KILN" --root "$WORK/store" -q build --build-mode lite --platform linux/amd64 -t e2e/amd64-only:1 "$WORK/ctx" >/dev/null
before=$(snapshot kiln-h1 kiln-h2 kiln-h3)
kiln_check --image e2e/amd64-only:1 > "$WORK/preflight.out" 2>&1; rc=$?
after=$(snapshot kiln-h1 kiln-h2 kiln-h3)
check "failing preflight exits 1" [ "$rc" = 1 ]
check "duplicate hostname reported" grep -q "$H1 .*hostname-unique .*FAIL .*also the hostname of $H2" "$WORK/preflight.out"
check "clock skew reported" grep -q "$H3 .*clock-skew .*FAIL .*+\(89\|9[0-9]\)\.[0-9] s" "$WORK/preflight.out"
check "port in use reported" grep -q "$H1 .*ports .*FAIL .*in use: 5000" "$WORK/preflight.out"
check "missing arch reported" grep -q "$H3 .*arch .*FAIL .*no linux/arm64 variant" "$WORK/preflight.out"
check "all four in one run, and it says nothing changed" grep -q "5 preflight checks failed; nothing was changed" "$WORK/preflight.out"
check "no host changed (paths and contents under /etc, /usr/bin, /usr/local/bin, /var/lib/kiln; sysctls)" [ "$before" = "$after" ]
kiln_check --image e2e/amd64-only:1 --skip-checks hostname-unique,clock-skew,ports,arch > "$WORK/skipped.out" 2>&1
check "--skip-checks skips them" [ $? = 0 ]

# --- bad input --------------------------------------------------------------------------------
printf 'kind: Cluster\nspec:\n  hosts:\n  - ips: [%s]\n    roles: [master]\n  - ips: [%s]\n    roles: [node]\n' "$H1" "$H1" > "$WORK/dup"
"$KILN" check -f "$WORK/dup" --known-hosts "$KH" > "$WORK/dup.out" 2>&1; rc=$?
check "a Clusterfile error names file:line:col" bash -c "[ $rc = 1 ] && grep -q 'dup:6:11' '$WORK/dup.out' && grep -q 'listed twice' '$WORK/dup.out'"
check "secrets never appear in output" bash -c "! grep -rq -e kiln-e2e-root -e kiln-e2e-ops '$WORK'/*.out"

# The hosts were changed by this test (hostname, a server, a date wrapper): start them afresh.
"$HOSTS" down >/dev/null 2>&1
finish

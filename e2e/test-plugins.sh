#!/usr/bin/env bash
# e2e: plugins on the test hosts (4: three for the cluster, one to scale with). The image
# e2e/images/plugins-e2e has a plugin for every cluster phase (on master0), one for every host
# phase (on every host), one for nodes only and a package (`hello`, revision 2); the Clusterfile
# adds a gate on masters (`pre-init-host`) and an older `hello`. Each hook records its phase,
# name, host and time. Checks: bad plugin documents fail at file:line:col and nothing runs; the
# dry run lists the hooks per host; a failing `pre-init-host` stops the run before any tuning
# with plugin, phase, host, exit code and output; the fixed run resumes without repeating
# finished hooks; scale-up, scale-down and delete run their hooks on the right hosts in the
# right order. Prints `N passed, N failed`.
#
#   e2e/test-plugins.sh KILN_BINARY
set -uo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
WORK=$(mktemp -d /tmp/kiln-e2e-plugins.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/e2e/lib.sh"
kiln() { "$KILN" --root "$WORK/store" "$@"; }
KH=(--known-hosts "$WORK/known_hosts" --accept-new-host-keys)
LOG=/var/log/kiln-e2e-plugins.log

"$HOSTS" up --hosts 4 --arch amd64,amd64,arm64,amd64 >/dev/null || { echo "0 passed, 1 failed (hosts did not come up)"; exit 1; }
INV=$("$HOSTS" inventory)
KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ssh_key"])' "$INV")
H1=$(ip_of kiln-h1); H2=$(ip_of kiln-h2); H3=$(ip_of kiln-h3); H4=$(ip_of kiln-h4)
for h in kiln-h1 kiln-h2 kiln-h3 kiln-h4; do on "$h" -- "rm -f $LOG /tmp/kiln-e2e-gate"; done
kiln -q build --build-mode lite --platform linux/amd64,linux/arm64 -t e2e/shell:1 "$ROOT/e2e/images/shell-e2e" >/dev/null &&
  kiln -q build --build-mode lite --platform linux/amd64,linux/arm64 -t e2e/plugins:1 "$ROOT/e2e/images/plugins-e2e" >/dev/null \
  || { echo "0 passed, 1 failed (image build)"; exit 1; }

clusterfile() { # FILE GATE_ACTION
  cat > "$1" <<EOF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: e2e-plugins
spec:
  image: e2e/plugins:1
  ssh: {user: root, pk: $KEY}
  hosts:
    - ips: [$H1, $H2]
      roles: [master]
    - ips: [$H3]
      roles: [node]
      ssh: {user: ops, pk: $KEY, passwd: kiln-e2e-ops}
---
apiVersion: sealer.io/v1
kind: Plugin
metadata:
  name: d-gate
spec:
  type: SHELL
  action: $2
  scope: master
  data: |
    if [ -f /tmp/kiln-e2e-gate ]; then echo "gate closed on \$HostIP" >&2; exit 3; fi
    echo "\$(date +%s.%N) \$PluginPhase \$PluginName \$HostIP" >> $LOG
---
apiVersion: sealer.io/v1
kind: Plugin
metadata:
  name: hello
  revision: 1
spec:
  type: SHELL
  action: post-install
  data: echo "\$(date +%s.%N) \$PluginPhase \$PluginName \$HostIP revision-1" >> $LOG
EOF
}
data_dirs_absent() { for h in kiln-h1 kiln-h2 kiln-h3; do on "$h" -- test ! -e /var/lib/kiln/data || return 1; done; }

# --- bad plugin documents: errors at file:line:col, nothing runs --------------------------------
clusterfile "$WORK/Clusterfile.bad" "pre-init-host|pre-join"
kiln run -f "$WORK/Clusterfile.bad" "${KH[@]}" > "$WORK/bad.out" 2>&1; rc=$?
check "an unknown phase is an error at its file:line:col (exit 1)" bash -c "[ $rc = 1 ] && grep -q 'Clusterfile.bad:21:11: unknown phase \`pre-join\` in plugin \`d-gate\`' '$WORK/bad.out'"
grep -q 'Clusterfile.bad:21:11' "$WORK/bad.out" || cat "$WORK/bad.out"
sed 's/  scope: master/  scope: ""/' "$WORK/Clusterfile.bad" | sed 's/|pre-join//' > "$WORK/Clusterfile.noscope"
kiln run -f "$WORK/Clusterfile.noscope" "${KH[@]}" > "$WORK/noscope.out" 2>&1; rc=$?
check "an empty scope is an error at its place" bash -c "[ $rc = 1 ] && grep -q 'Clusterfile.noscope:22:10: scope \`\` of plugin \`d-gate\`' '$WORK/noscope.out'"
grep -q 'Clusterfile.noscope:22:10' "$WORK/noscope.out" || cat "$WORK/noscope.out"
check "and nothing ran on any host" data_dirs_absent

# --- listing and the dry run --------------------------------------------------------------------
clusterfile "$WORK/Clusterfile" "pre-init-host"
kiln plugin list -f "$WORK/Clusterfile" > "$WORK/list.out" 2>&1
check "kiln plugin list shows each plugin once, the package's revision 2 chosen over the Clusterfile's 1" bash -c "
  grep -q '^hello .* 2 .*post-install .*image package plugins/hello/' '$WORK/list.out' &&
  grep -q 'plugin \`hello\`: revision 2 from image package plugins/hello/ is used, not revision 1' '$WORK/list.out' &&
  [ \$(grep -c '^[a-d]-' '$WORK/list.out') = 4 ]"
kiln run -f "$WORK/Clusterfile" "${KH[@]}" --dry-run > "$WORK/dry.out" 2>&1
check "the dry run lists the hooks per host" bash -c "
  grep '^$H1 ' '$WORK/dry.out' | grep -q 'pre-install: b-cluster-marker; pre-init-host: a-host-marker, d-gate' &&
  grep '^$H3 ' '$WORK/dry.out' | grep -q 'pre-init-host: a-host-marker, c-nodes-only' &&
  ! grep '^$H3 ' '$WORK/dry.out' | grep -q 'd-gate'"
check "and changes nothing" data_dirs_absent

# --- a failing pre-init-host stops the run before any tuning ------------------------------------
on kiln-h2 -- touch /tmp/kiln-e2e-gate
kiln run -f "$WORK/Clusterfile" "${KH[@]}" > "$WORK/fail.out" 2>&1; rc=$?
check "a failing pre-init-host hook stops the run (exit 1)" [ "$rc" = 1 ]
check "the error names the phase, the host, the plugin and the exit code, and shows the output" bash -c "
  grep -q 'phase \`pre-init-host\` failed on $H2' '$WORK/fail.out' &&
  grep -q 'plugin \`d-gate\` (pre-init-host) failed on $H2 with exit code 3' '$WORK/fail.out' &&
  grep -q 'gate closed on $H2' '$WORK/fail.out'"
grep -q 'd-gate' "$WORK/fail.out" || tail -n 20 "$WORK/fail.out"
untuned() { for h in kiln-h1 kiln-h2 kiln-h3; do on "$h" -- "test ! -e /var/lib/kiln/data/e2e-plugins/.kiln/tune && [ \$(sysctl -n net.core.somaxconn) != 1234 ]" || return 1; done; }
check "no host was tuned" untuned
on kiln-h2 -- rm -f /tmp/kiln-e2e-gate
kiln run -f "$WORK/Clusterfile" "${KH[@]}" > "$WORK/run.out" 2>&1; rc=$?
check "the fixed run completes" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/run.out"

# --- scale-up, scale-down and delete ------------------------------------------------------------
kiln scale-up -n "$H4" --pk "$KEY" "${KH[@]}" > "$WORK/up.out" 2>&1; rc=$?
check "scale-up succeeds" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/up.out"
kiln scale-down -n "$H4" "${KH[@]}" > "$WORK/down.out" 2>&1; rc=$?
check "scale-down succeeds" [ "$rc" = 0 ]
kiln delete --cluster e2e-plugins --known-hosts "$WORK/known_hosts" > "$WORK/delete.out" 2>&1; rc=$?
check "delete succeeds" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/delete.out"

for h in kiln-h1 kiln-h2 kiln-h3 kiln-h4; do on "$h" -- "cat $LOG 2>/dev/null"; done > "$WORK/markers.log"
python3 - "$WORK/markers.log" "$H1" "$H2" "$H3" "$H4" > "$WORK/order.out" 2>&1 <<'PY'
import sys
from collections import Counter
h1, h2, h3, h4 = sys.argv[2:6]
rows = sorted(tuple(l.split()) for l in open(sys.argv[1]) if l.strip())
events = [(float(r[0]), r[1], r[2], r[3]) for r in rows]
count = Counter((p, n, h) for _, p, n, h in events)
problems = []
def want(phase, name, hosts, times=1):
    for h in hosts:
        if count[(phase, name, h)] != times:
            problems.append("%s %s on %s ran %d times, want %d" % (phase, name, h, count[(phase, name, h)], times))
    others = [h for (p, n, h) in count if p == phase and n == name and h not in hosts]
    if others:
        problems.append("%s %s also ran on %s" % (phase, name, others))
def t(phase, name, host, which=min):
    ts = [e[0] for e in events if e[1:] == (phase, name, host)]
    return which(ts) if ts else float("nan")
cluster = ["pre-install", "post-install", "pre-scaleup", "post-scaleup", "pre-uninstall", "post-uninstall"]
for phase in cluster:
    want(phase, "b-cluster-marker", [h1])
for phase in ["pre-init-host", "post-init-host", "pre-clean-host", "post-clean-host"]:
    want(phase, "a-host-marker", [h1, h2, h3, h4])
want("pre-init-host", "c-nodes-only", [h3, h4])
want("pre-init-host", "d-gate", [h1, h2])
want("post-install", "hello", [h1])
if not any(e[1:] == ("post-install", "hello", h1) for e in events) or \
        not [r for r in rows if r[1:3] == ("post-install", "hello") and r[4:] == ("revision-2", "hello")]:
    problems.append("hello ran as %s, want revision 2 in its package directory" % [r for r in rows if r[2] == "hello"])
order = [
    ("run", t("pre-install", "b-cluster-marker", h1), min(t("pre-init-host", "a-host-marker", h) for h in (h1, h2, h3))),
    ("run", max(t("pre-init-host", "a-host-marker", h) for h in (h1, h2, h3)), min(t("post-init-host", "a-host-marker", h) for h in (h1, h2, h3))),
    ("run", max(t("post-init-host", "a-host-marker", h) for h in (h1, h2, h3)), t("post-install", "b-cluster-marker", h1)),
    ("name order", t("pre-init-host", "a-host-marker", h3), t("pre-init-host", "c-nodes-only", h3)),
    ("scale-up", t("pre-scaleup", "b-cluster-marker", h1), t("pre-init-host", "a-host-marker", h4)),
    ("scale-up", t("post-init-host", "a-host-marker", h4), t("post-scaleup", "b-cluster-marker", h1)),
    ("scale-down", t("pre-clean-host", "a-host-marker", h4), t("post-clean-host", "a-host-marker", h4)),
    ("delete", t("pre-uninstall", "b-cluster-marker", h1), min(t("pre-clean-host", "a-host-marker", h) for h in (h1, h2, h3))),
    ("delete", max(t("post-clean-host", "a-host-marker", h) for h in (h1, h2, h3)), t("post-uninstall", "b-cluster-marker", h1)),
]
for what, a, b in order:
    if not a < b:
        problems.append("%s: out of order (%s !< %s)" % (what, a, b))
print("\n".join(problems) or "ok")
PY
check "every hook ran on the right hosts, once (none repeated by the resumed run), in order" grep -qx ok "$WORK/order.out"
grep -qx ok "$WORK/order.out" || { cat "$WORK/order.out"; cat "$WORK/markers.log"; }

# --- the built-in hostname and time-sync plugins ------------------------------------------------
# Cloned machines: kiln-h1 and kiln-h2 answer to one hostname, and kiln-h3's clock is 90 s
# ahead. The `date` wrapper stands in for h3's own clock (nspawn hosts share this machine's
# kernel clock and may not set it): the machine's time plus an offset that `date -s` moves.
mkdir -p "$WORK/builtin-ctx/plugins"
cp -a "$ROOT/plugins/hostname" "$ROOT/plugins/time-sync" "$WORK/builtin-ctx/plugins/"
printf 'FROM e2e/shell:1\nCOPY plugins plugins\n' > "$WORK/builtin-ctx/Kubefile"
kiln -q build --build-mode lite --platform linux/amd64,linux/arm64 -t e2e/builtins:1 "$WORK/builtin-ctx" >/dev/null
check "an image with the bundled hostname and time-sync plugins builds" [ $? = 0 ]
builtin_clusterfile() { # FILE IMAGE
  cat > "$1" <<EOF
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: e2e-builtins
spec:
  image: $2
  ssh: {user: root, pk: $KEY}
  hosts:
    - ips: [$H1]
      roles: [master]
      env: [HostName=m-0]
    - ips: [$H2]
      roles: [master]
      env: [HostName=m-1]
    - ips: [$H3]
      roles: [node]
      env: [HostName=n-0]
EOF
}
builtin_clusterfile "$WORK/Clusterfile.builtins" e2e/builtins:1
clock_wrapper=$(base64 -w0 <<'SH'
#!/bin/sh
f=/var/tmp/kiln-e2e-clock-offset
off=$(cat "$f" 2>/dev/null || echo 0)
now=$(/bin/date +%s)
if [ "$1" = -s ]; then
  t=$(/bin/date -d "$2" +%s) || exit 1
  echo $((t - now)) > "$f"
  exec /bin/date -d "@$t"
fi
exec /bin/date -d "@$((now + off))" "$@"
SH
)
on kiln-h1 -- hostname cloned; on kiln-h2 -- hostname cloned
on kiln-h3 -- "echo $clock_wrapper | base64 -d > /usr/local/bin/date && chmod +x /usr/local/bin/date && echo 90 > /var/tmp/kiln-e2e-clock-offset"
before=$(snapshot kiln-h1 kiln-h2 kiln-h3)
kiln check -f "$WORK/Clusterfile.builtins" "${KH[@]}" > "$WORK/builtin-check.out" 2>&1; rc=$?
check "kiln check passes: the duplicate hostname and the skewed clock are the plugins' to fix" bash -c "
  [ $rc = 0 ] &&
  grep -q '$H1 .*hostname-unique .*ok .*cloned → m-0 (plugin hostname)' '$WORK/builtin-check.out' &&
  grep -q '$H2 .*hostname-unique .*ok .*cloned → m-1 (plugin hostname)' '$WORK/builtin-check.out' &&
  grep -q '$H3 .*clock-skew .*repair .*+\(89\|9[0-9]\)\.[0-9] s .*plugin time-sync syncs it' '$WORK/builtin-check.out'"
[ "$rc" = 0 ] || cat "$WORK/builtin-check.out"
kiln run -f "$WORK/Clusterfile.builtins" "${KH[@]}" > "$WORK/builtin-run.out" 2>&1; rc=$?
check "the run completes" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 30 "$WORK/builtin-run.out"
named() { # HOST NAME IP
  [ "$(on "$1" -- hostname)" = "$2" ] && [ "$(on "$1" -- cat /etc/hostname)" = "$2" ] &&
    [ "$(on "$1" -- getent hosts "$2" | awk '{print $1}')" = "$3" ]
}
all_named() { named kiln-h1 m-0 "$H1" && named kiln-h2 m-1 "$H2" && named kiln-h3 n-0 "$H3"; }
check "each host has the name from its HostName, which resolves to it" all_named
h3_skew() { echo $(( $(on kiln-h3 -- date +%s) - $(date +%s) )); }
skew=$(h3_skew)
check "kiln-h3's clock was stepped to this machine's ($skew s now), and kiln measured it again" bash -c "
  [ ${skew#-} -le 2 ] && grep -q '\[$H3\] clock-skew: [-+][0-9.]* s after plugin time-sync: ok' '$WORK/builtin-run.out'"
synced() {
  for _ in $(seq 1 30); do
    on kiln-h3 -- chronyc -n sources 2>/dev/null | grep -q "^\^\* $H1 " && return 0
    sleep 1
  done
  on kiln-h3 -- chronyc -n sources
  return 1
}
chrony_set_up() {
  on kiln-h1 -- grep -qx "'local stratum 10'" /etc/chrony/chrony.conf && on kiln-h1 -- grep -qx "'allow $H3'" /etc/chrony/chrony.conf &&
    on kiln-h3 -- grep -qx "'server $H1 iburst'" /etc/chrony/chrony.conf && synced
}
check "chrony on master0 serves the cluster; kiln-h3's chrony follows it (its selected source)" chrony_set_up
kiln delete --cluster e2e-builtins --known-hosts "$WORK/known_hosts" > "$WORK/builtin-delete.out" 2>&1; rc=$?
check "delete succeeds" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 20 "$WORK/builtin-delete.out"
as_before() {
  [ "$(on kiln-h1 -- hostname)" = cloned ] && [ "$(on kiln-h2 -- hostname)" = cloned ] && [ "$(on kiln-h3 -- hostname)" = kiln-h3 ] || return 1
  for h in kiln-h1 kiln-h2 kiln-h3; do ! on "$h" -- systemctl is-active --quiet chrony || return 1; done
}
check "the old hostnames are back and chrony is stopped again" as_before
after=$(snapshot kiln-h1 kiln-h2 kiln-h3)
check "the hosts are as before the run (paths, modes and contents under /etc, /usr/bin, /usr/local/bin, /var/lib/kiln; sysctls)" [ "$before" = "$after" ]

# A plugin that promises a repair and does not keep it: kiln measures again and stops the run.
on kiln-h3 -- "echo 90 > /var/tmp/kiln-e2e-clock-offset"
builtin_clusterfile "$WORK/Clusterfile.lazy" e2e/shell:1
cat >> "$WORK/Clusterfile.lazy" <<'EOF'
---
apiVersion: sealer.io/v1
kind: Plugin
metadata:
  name: lazy-sync
  annotations: {kiln.io/repairs: clock-skew}
spec: {type: SHELL, action: pre-init-host, scope: node, data: echo pretending}
EOF
sed -i '/HostName=/d' "$WORK/Clusterfile.lazy"
on kiln-h1 -- hostname kiln-h1; on kiln-h2 -- hostname kiln-h2
kiln run -f "$WORK/Clusterfile.lazy" "${KH[@]}" > "$WORK/lazy.out" 2>&1; rc=$?
check "a repair that did not happen stops the run after pre-init-host, naming the host, the clock and the plugin" bash -c "
  [ $rc = 1 ] && grep -q 'phase \`pre-init-host\` failed on $H3' '$WORK/lazy.out' &&
  grep -q 'the clock is still +\(89\|9[0-9]\)\.[0-9] s from this machine after plugin \`lazy-sync\`' '$WORK/lazy.out'"
grep -q 'lazy-sync' "$WORK/lazy.out" || tail -n 20 "$WORK/lazy.out"
untuned_lazy() { for h in kiln-h1 kiln-h2 kiln-h3; do on "$h" -- "test ! -e /var/lib/kiln/data/e2e-builtins/.kiln/tune" || return 1; done; }
check "no host was tuned" untuned_lazy
kiln delete --cluster e2e-builtins --known-hosts "$WORK/known_hosts" >/dev/null 2>&1
on kiln-h3 -- "rm -f /usr/local/bin/date /var/tmp/kiln-e2e-clock-offset"

"$HOSTS" down >/dev/null 2>&1
finish

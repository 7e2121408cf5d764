#!/usr/bin/env bash
# make bench-run: distribution of a rootfs by `kiln run` to 1, 2 and 4 test hosts, beside
# parallel `scp -r` of the same tree to the same hosts, in the same run. Two trees, each built
# from this machine's own files: 10 000 small files (0.5-16 KiB) and 1 GiB of big files, the
# big one twice: in an image with gzip layers (the default) and with zstd layers.
# Prints wall time, bytes on the wire per host (counted on each host's veth, so SSH overhead
# included for both) and kiln's peak RSS; then a re-run of kiln on the finished hosts and the
# share of bytes it sent. The veths run at memory speed and the hosts share this machine's
# cores and disk, which favours sending raw bytes over sending compressed layers and unpacking
# them; BENCH_LINK=1gbit shapes every host's link to a data-centre rate instead. Targets: small
# files <= 0.5x scp's time, big files <= 1.0x, re-run <= 1 % of the bytes.
#
#   e2e/bench/run.sh KILN_BINARY
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HOSTS=$ROOT/e2e/hosts.sh
WORK=${BENCH_DIR:-$ROOT/.bench/run}
mkdir -p "$WORK"
. "$(dirname "$0")/lib.sh"
export KILN_ROOT=$WORK/store
# How kiln sends layers (`kiln run --layer-transfer`): auto measures each host's link.
TRANSFER=${BENCH_LAYER_TRANSFER:-auto}
# More `kiln run` flags, e.g. `--no-layer-cache` (hosts keep no copy of the layers).
read -r -a KILN_FLAGS <<< "${BENCH_KILN_FLAGS:-}"

# Four amd64 hosts (amd64 only: an emulated arm64 sshd would measure qemu, not the copy).
"$HOSTS" down >/dev/null 2>&1 || true
"$HOSTS" up --hosts 4 --arch amd64,amd64,amd64,amd64 >/dev/null
# Fresh hosts have fresh host keys.
rm -f "$WORK/known_hosts"
BENCH_CLEANUP+=("$WORK/known_hosts")
INV=$("$HOSTS" inventory)
KEY=$(jq -r .ssh_key "$INV")
mapfile -t IPS < <(jq -r '.hosts[].ip' "$INV")
mapfile -t NAMES < <(jq -r '.hosts[].name' "$INV")
SSH_OPTS=(-q -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes)
on() { "$HOSTS" ssh "$1" -- "$2"; }
wire() { cat "/sys/class/net/kv-${1#kiln-}/statistics/tx_bytes"; }
# BENCH_LINK=1gbit: each host's link shaped to that rate (tc tbf on its veth, towards the
# host), as a data-centre link, for kiln and scp alike. Unset: the veths' memory speed.
LINK=${BENCH_LINK:-}
if [ -n "$LINK" ]; then
  for name in "${NAMES[@]}"; do tc qdisc replace dev "kv-${name#kiln-}" root tbf rate "$LINK" burst 4mb latency 100ms; done
fi

# The trees and their cluster images (cached between runs). `big-zstd` is the big tree in an
# image built with `--compression zstd` (the layers kiln sends as they are to hosts with zstd).
KINDS=${BENCH_KINDS:-small big big-zstd}
tree_of() { echo "$WORK/ctx-${1%-zstd}/tree"; }
for kind in $KINDS; do
  src=${kind%-zstd}; tree=$(tree_of "$kind")
  if [ ! -d "$tree" ]; then
    echo "Generating the $src-file tree (cached in $tree)..."
    rm -rf "$WORK/ctx-$src"; mkdir -p "$WORK/ctx-$src/scripts"
    python3 "$(dirname "$0")/gen_tree.py" "$src" "$tree.tmp" && mv "$tree.tmp" "$tree"
  fi
  printf '#!/bin/bash\ntrue\n' > "$WORK/ctx-$src/scripts/init-master0.sh"
  printf 'FROM scratch\nLABEL cluster.alpha.sealer.io/cluster-runtime-type=shell\nCOPY scripts scripts\nCOPY tree tree\n' \
    > "$WORK/Kubefile.$kind"
  compression=gzip; [ "$kind" = "$src" ] || compression=zstd
  "$KILN" -q build --build-mode lite --compression "$compression" -t "bench.local/run/$kind:1" \
    -f "$WORK/Kubefile.$kind" "$WORK/ctx-$src" >/dev/null
done

clusterfile() { # KIND N
  {
    printf 'apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: bench-%s\nspec:\n' "$1"
    printf '  image: bench.local/run/%s:1\n  ssh: {user: root, pk: %s}\n  hosts:\n' "$1" "$KEY"
    printf '    - ips: [%s]\n      roles: [master]\n' "${IPS[0]}"
    [ "$2" -gt 1 ] && printf '    - ips: [%s]\n      roles: [node]\n' "$(IFS=,; echo "${IPS[*]:1:$(($2 - 1))}")"
  } > "$WORK/Clusterfile.$1.$2"
  echo "$WORK/Clusterfile.$1.$2"
}

# measure N COMMAND...: runs COMMAND, prints "SECONDS BYTES_PER_HOST" (bytes on the wire,
# averaged over the first N hosts' veths), or FAILED.
measure() {
  local n=$1; shift
  local before=() t0 t1 i sum=0
  for i in $(seq 0 $((n - 1))); do before+=("$(wire "${NAMES[$i]}")"); done
  t0=$(now); "$@" || { echo FAILED; return; }; t1=$(now)
  for i in $(seq 0 $((n - 1))); do sum=$((sum + $(wire "${NAMES[$i]}") - ${before[$i]})); done
  echo "$(echo "$t1 - $t0" | bc) $((sum / n))"
}

kiln_run() { # KIND N
  /usr/bin/time -f %M -o "$WORK/rss" "$KILN" -q run -f "$(clusterfile "$1" "$2")" \
    --known-hosts "$WORK/known_hosts" --accept-new-host-keys --layer-transfer "$TRANSFER" "${KILN_FLAGS[@]}" --json > "$WORK/run.json" 2> "$WORK/run.err" \
    || { cat "$WORK/run.err" >&2; return 1; }
}
kiln_clean() { # KIND N
  "$KILN" -q delete -f "$WORK/Clusterfile.$1.$2" --known-hosts "$WORK/known_hosts" >/dev/null 2>&1 || true
  rm -rf "$KILN_ROOT/clusters/bench-$1"
  for i in $(seq 0 3); do on "${NAMES[$i]}" "rm -rf /var/lib/kiln /root/scp-bench; sync"; done
  sync; sleep 2
}
scp_all() { # KIND N
  local i pids=()
  for i in $(seq 0 $(($2 - 1))); do
    scp "${SSH_OPTS[@]}" -r "$(tree_of "$1")" "root@${IPS[$i]}:/root/scp-bench" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

human() { numfmt --to=iec --suffix=B "$1"; }
trap 'stop_servers; "$HOSTS" down >/dev/null 2>&1 || true' EXIT

declare -A RATIO
echo
echo "kiln run --layer-transfer $TRANSFER ${KILN_FLAGS[*]}; links: ${LINK:-unshaped (memory speed)}"
printf '%-6s %5s  %9s %11s  %9s %11s  %6s  %9s  %s\n' tree hosts "kiln s" "kiln B/host" "scp s" "scp B/host" ratio "kiln RSS" "layers sent (link)"
for kind in $KINDS; do
  size=$(du -sb "$(tree_of "$kind")" | cut -f1)
  files=$(find "$(tree_of "$kind")" -type f | wc -l)
  for n in 1 2 4; do
    kiln_clean "$kind" "$n"
    read -r kt kb < <(measure "$n" kiln_run "$kind" "$n")
    [ "$kt" != FAILED ] || { echo "kiln run failed ($kind, $n hosts)" >&2; exit 1; }
    rss=$(cat "$WORK/rss")
    how=$(jq -r '([.distributed[].transfer // empty] | unique | join(",")) + " ("
      + ([.distributed[].link_bytes_per_sec // empty] | if length > 0 then "\(min / 1e6 | floor)-\(max / 1e6 | floor) MB/s" else "not measured" end) + ")"' "$WORK/run.json")
    # The re-run on the finished hosts: what it sends (rootfs bytes by kiln's count, and all
    # bytes on the wire: connection, facts, preflight and journal included).
    read -r rt rb < <(measure "$n" kiln_run "$kind" "$n")
    [ "$rt" != FAILED ] || { echo "kiln re-run failed ($kind, $n hosts)" >&2; exit 1; }
    rootfs_again=$(jq '[.distributed[].bytes_sent] | add' "$WORK/run.json")
    kiln_clean "$kind" "$n"
    read -r st sb < <(measure "$n" scp_all "$kind" "$n")
    [ "$st" != FAILED ] || { echo "scp failed ($kind, $n hosts)" >&2; exit 1; }
    ratio=$(echo "scale=2; $kt / $st" | bc)
    RATIO[$kind.$n]=$ratio
    printf '%-6s %5s  %9.2f %11s  %9.2f %11s  %5sx  %9s  %s\n' "$kind" "$n" "$kt" "$(human "$kb")" "$st" "$(human "$sb")" "$ratio" "$(human $((rss * 1024)))" "$how"
    printf '%-6s %5s  re-run: %.2f s, %s rootfs bytes sent, %s per host on the wire (%s %% of the first run)\n' \
      "" "" "$rt" "$rootfs_again" "$(human "$rb")" "$(echo "scale=2; 100 * $rb / $kb" | bc)"
  done
  kiln_clean "$kind" 4
  echo "       ($kind tree: $files files, $(human "$size"))"
done
got() { echo "${RATIO[$1.1]:--}, ${RATIO[$1.2]:--}, ${RATIO[$1.4]:--}"; }
echo "targets: small files <= 0.5x scp (got $(got small)); big files <= 1.0x (gzip layers: $(got big);" \
  "zstd layers: $(got big-zstd)); re-run <= 1 % of the bytes"

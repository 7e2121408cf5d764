#!/usr/bin/env bash
# make bench-run: distribution of a rootfs by `kiln run` to 1, 2 and 4 test hosts, beside
# parallel `scp -r` of the same tree to the same hosts, in the same run. Two trees, each built
# from this machine's own files: 10 000 small files (0.5-16 KiB) and 1 GiB of big files, the
# big one twice: in an image with gzip layers (the default) and with zstd layers.
# Prints wall time, bytes on the wire per host (counted on each host's veth, so SSH overhead
# included for both) and kiln's peak RSS; then a re-run of kiln on the finished hosts and the
# share of bytes it sent. Each cell is the median of BENCH_SAMPLES (3) runs of each, kiln and
# scp taking turns, with the range beside it: runs on this machine vary by a third.
# The links: unshaped, the veths run at memory speed and the hosts share this machine's two
# cores and one disk, which favours sending raw bytes over sending compressed layers and
# unpacking them (four hosts' decompressors share two cores). BENCH_LINK=1gbit shapes every
# host's own link to that rate; BENCH_UPLINK=1gbit shapes this machine's link to all hosts
# (one NIC, as a delivery engineer's laptop has), for kiln and scp alike. Targets: small files
# <= 0.5x scp's time, big files <= 1.0x, re-run <= 1 % of the bytes.
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
# BENCH_UPLINK=1gbit: this machine's one link to every host (the bridge's own port, which
# carries what this machine sends; host-to-host traffic does not pass it).
UPLINK=${BENCH_UPLINK:-}
if [ -n "$UPLINK" ]; then
  tc qdisc replace dev "$(jq -r .bridge "$INV")" root tbf rate "$UPLINK" burst 4mb latency 100ms
fi
SAMPLES=${BENCH_SAMPLES:-3}
# Freshly booted hosts are still starting services: the first runs would pay for that.
for name in "${NAMES[@]}"; do on "$name" "systemctl is-system-running --wait >/dev/null 2>&1 || true"; done
sleep 5

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

# Every measured run writes to fresh directories (cluster `bench-KIND-RUN`, scp into
# `/root/scp-bench-RUN`). Removing a tree right before the next run would slow that run down:
# this machine's ext4 passes over inodes freed in the last minute when it allocates new ones,
# so 10 000 files made just after 10 000 were removed take seconds longer, for kiln and scp
# alike but by chance amounts. Trees of many files therefore stay until their kind is done;
# big-file trees (a few inodes, a lot of disk) go after each run.
RUN=0
clusterfile() { # KIND N RUN
  {
    printf 'apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: bench-%s-%s\nspec:\n' "$1" "$3"
    printf '  image: bench.local/run/%s:1\n  ssh: {user: root, pk: %s}\n  hosts:\n' "$1" "$KEY"
    printf '    - ips: [%s]\n      roles: [master]\n' "${IPS[0]}"
    [ "$2" -gt 1 ] && printf '    - ips: [%s]\n      roles: [node]\n' "$(IFS=,; echo "${IPS[*]:1:$(($2 - 1))}")"
  } > "$WORK/Clusterfile.$1.$2.$3"
  echo "$WORK/Clusterfile.$1.$2.$3"
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

kiln_run() { # KIND N RUN
  /usr/bin/time -f %M -o "$WORK/rss" "$KILN" -q run -f "$(clusterfile "$1" "$2" "$3")" \
    --known-hosts "$WORK/known_hosts" --accept-new-host-keys --layer-transfer "$TRANSFER" "${KILN_FLAGS[@]}" --json > "$WORK/run.json" 2> "$WORK/run.err" \
    || { cat "$WORK/run.err" >&2; return 1; }
}
# clean_hosts: every host as it was before the bench, nothing left to write back.
clean_hosts() {
  rm -rf "$KILN_ROOT"/clusters/bench-* "$WORK"/Clusterfile.*
  for i in $(seq 0 3); do on "${NAMES[$i]}" "rm -rf /var/lib/kiln /root/scp-bench-*; sync"; done
  sync; sleep 2
}
# next_run KIND: a fresh run number; the hosts cleaned first unless KIND's trees stay.
next_run() {
  RUN=$((RUN + 1))
  [ "$1" = small ] || clean_hosts
}
scp_all() { # KIND N RUN
  local i pids=()
  for i in $(seq 0 $(($2 - 1))); do
    scp "${SSH_OPTS[@]}" -r "$(tree_of "$1")" "root@${IPS[$i]}:/root/scp-bench-$3" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

human() { numfmt --to=iec --suffix=B "$1"; }
# median and range of the numbers given: "MEDIAN MIN MAX".
stats() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%s %s %s\n", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
trap 'stop_servers; "$HOSTS" down >/dev/null 2>&1 || true' EXIT
clean_hosts

declare -A RATIO
echo
echo "kiln run --layer-transfer $TRANSFER ${KILN_FLAGS[*]}; links: ${LINK:-unshaped (memory speed)} per host;" \
  "uplink: ${UPLINK:-unshaped}; median of $SAMPLES runs each (range)"
printf '%-8s %5s  %-17s %11s  %-17s %11s  %6s  %9s  %s\n' tree hosts "kiln s" "kiln B/host" "scp s" "scp B/host" ratio "kiln RSS" "layers sent (link)"
for kind in $KINDS; do
  size=$(du -sb "$(tree_of "$kind")" | cut -f1)
  files=$(find "$(tree_of "$kind")" -type f | wc -l)
  for n in 1 2 4; do
    kts=() sts=() rss=0
    for _ in $(seq "$SAMPLES"); do
      next_run "$kind"
      read -r kt kb < <(measure "$n" kiln_run "$kind" "$n" "$RUN")
      [ "$kt" != FAILED ] || { echo "kiln run failed ($kind, $n hosts)" >&2; exit 1; }
      kts+=("$kt")
      [ "$(cat "$WORK/rss")" -gt "$rss" ] && rss=$(cat "$WORK/rss")
      next_run "$kind"
      read -r st sb < <(measure "$n" scp_all "$kind" "$n" "$RUN")
      [ "$st" != FAILED ] || { echo "scp failed ($kind, $n hosts)" >&2; exit 1; }
      sts+=("$st")
    done
    # The hosts as kiln left them, for how it sent and the re-run.
    next_run "$kind"
    measure "$n" kiln_run "$kind" "$n" "$RUN" > /dev/null
    how=$(jq -r '([.distributed[].transfer // empty] | unique | join(",")) + " ("
      + ([.distributed[].link_bytes_per_sec // empty] | if length > 0 then "\(min / 1e6 | floor)-\(max / 1e6 | floor) MB/s" else "not measured" end) + ")"' "$WORK/run.json")
    # The re-run on the finished hosts: what it sends (rootfs bytes by kiln's count, and all
    # bytes on the wire: connection, facts, preflight and journal included).
    read -r rt rb < <(measure "$n" kiln_run "$kind" "$n" "$RUN")
    [ "$rt" != FAILED ] || { echo "kiln re-run failed ($kind, $n hosts)" >&2; exit 1; }
    rootfs_again=$(jq '[.distributed[].bytes_sent] | add' "$WORK/run.json")
    read -r km kmin kmax < <(stats "${kts[@]}")
    read -r sm smin smax < <(stats "${sts[@]}")
    ratio=$(echo "scale=2; $km / $sm" | bc)
    RATIO[$kind.$n]=$ratio
    printf '%-8s %5s  %5.2f (%5.2f-%5.2f) %11s  %5.2f (%5.2f-%5.2f) %11s  %5sx  %9s  %s\n' "$kind" "$n" "$km" "$kmin" "$kmax" "$(human "$kb")" \
      "$sm" "$smin" "$smax" "$(human "$sb")" "$ratio" "$(human $((rss * 1024)))" "$how"
    printf '%-8s %5s  re-run: %.2f s, %s rootfs bytes sent, %s per host on the wire (%s %% of the first run)\n' \
      "" "" "$rt" "$rootfs_again" "$(human "$rb")" "$(echo "scale=2; 100 * $rb / $kb" | bc)"
  done
  clean_hosts
  echo "         ($kind tree: $files files, $(human "$size"))"
done
got() { echo "${RATIO[$1.1]:--}, ${RATIO[$1.2]:--}, ${RATIO[$1.4]:--}"; }
echo "targets: small files <= 0.5x scp (got $(got small)); big files <= 1.0x (gzip layers: $(got big);" \
  "zstd layers: $(got big-zstd)); re-run <= 1 % of the bytes"

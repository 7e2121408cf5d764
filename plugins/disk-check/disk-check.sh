#!/bin/bash
# See plugin.yaml.
set -euo pipefail
if ! command -v fio >/dev/null; then
  echo "disk-check: fio is not installed on $HostIP: not measured"
  exit 0
fi
dir=${DiskCheckDir:-/var/lib}/kiln-disk-check.$$
max_ms=${DiskCheckMaxFsyncMs:-10}
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
# etcd's own recommendation for this test: small sequential writes, each followed by fdatasync.
fio --name=kiln-disk-check --directory="$dir" --rw=write --ioengine=sync --fdatasync=1 \
    --size="${DiskCheckSize:-22m}" --bs=2300 --output-format=json > "$dir/out.json" 2> "$dir/err" \
  || { cat "$dir/err" >&2; exit 1; }
# fio reports the fdatasync latencies under jobs[0].sync.lat_ns.
p99_ns=$(awk '/^ *"sync" : \{/ {sync = 1} sync && $1 == "\"99.000000\"" {gsub(/[^0-9]/, "", $3); print $3; exit}' "$dir/out.json")
if [ -z "$p99_ns" ]; then
  echo "disk-check: could not read fio's fdatasync latency on $HostIP" >&2
  exit 1
fi
p99_ms=$(awk -v ns="$p99_ns" 'BEGIN {printf "%.2f", ns / 1e6}')
if awk -v ms="$p99_ms" -v max="$max_ms" 'BEGIN {exit !(ms > max)}'; then
  echo "disk-check: $HostIP writes with fdatasync take $p99_ms ms at the 99th percentile, over $max_ms ms: etcd will be unstable here" >&2
  exit 1
fi
echo "disk-check: $HostIP fdatasync p99 $p99_ms ms (limit $max_ms ms)"

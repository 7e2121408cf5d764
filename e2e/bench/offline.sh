#!/usr/bin/env bash
# make bench-offline: (1) cache 20 images (~500 MiB) into a cluster image with `kiln build`
# beside `skopeo sync` of the same list, in the same run; (2) `skopeo copy` of one image out of
# `kiln registry serve` beside out of docker-registry serving the same registry/ content.
# Prints wall times and ratios (targets <= 1.0).
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-$ROOT/.bench/offline}
mkdir -p "$WORK"
. "$(dirname "$0")/lib.sh"
registry() { start_registry "$1" "$2" "$WORK/reg-$2.yml"; }

ARCHIVE=$WORK/images.tar
[ -f "$ARCHIVE" ] || echo "Generating 20 images of ~25 MiB (3 gzip layers each) in $ARCHIVE (cached)..."
oci_archive "$ARCHIVE" "bench.local/offline/img%02d:1" 20 16 6 3

# The source registry holds the 20 images.
SRC=$(free_port); rm -rf "$WORK/src"; registry "$WORK/src" "$SRC"
rm -rf "$WORK/seed"; "$KILN" --root "$WORK/seed" -q load -i "$ARCHIVE" >/dev/null
for n in $(seq -w 0 19); do "$KILN" --root "$WORK/seed" -q push --plain-http "bench.local/offline/img$n:1" "127.0.0.1:$SRC/bench/img$n:1" >/dev/null; done
TOTAL=$(du -sb "$WORK/src" | cut -f1)

# (1) kiln build caching all 20, beside skopeo sync of the same list.
CTX=$WORK/ctx; rm -rf "$CTX"; mkdir -p "$CTX/manifests"
for n in $(seq -w 0 19); do echo "127.0.0.1:$SRC/bench/img$n:1"; done > "$CTX/manifests/imageList"
printf 'FROM scratch\nCOPY manifests manifests\n' > "$CTX/Kubefile"
{ echo "127.0.0.1:$SRC:"; echo "  tls-verify: false"; echo "  images:"; for n in $(seq -w 0 19); do echo "    bench/img$n: [\"1\"]"; done; } > "$WORK/sync.yaml"
kiln_cache_once() {
  rm -rf "$WORK/store"; sync; sleep 2
  local t0 t1; t0=$(now)
  "$KILN" --root "$WORK/store" -q build -t bench.local/offline/cluster:1 --insecure-registry "127.0.0.1:$SRC" "$CTX" >/dev/null
  t1=$(now); echo "$t1 - $t0" | bc
}
skopeo_sync_once() {
  rm -rf "$WORK/sync-out"; mkdir -p "$WORK/sync-out"; sync; sleep 2
  local t0 t1; t0=$(now)
  skopeo sync --src yaml --dest dir "$WORK/sync.yaml" "$WORK/sync-out" >/dev/null 2>&1
  t1=$(now); echo "$t1 - $t0" | bc
}
# Two alternating rounds, best of each: writeback of the previous run skews single figures.
kiln_cache=$(kiln_cache_once); skopeo_sync=$(skopeo_sync_once)
skopeo_sync=$(best "$(skopeo_sync_once)" "$skopeo_sync"); kiln_cache=$(best "$(kiln_cache_once)" "$kiln_cache")
rm -rf "$WORK/sync-out"

# (2) the same registry/ content served by kiln and by docker-registry.
KP=$(free_port)
"$KILN" --root "$WORK/store" registry serve --image bench.local/offline/cluster:1 --listen "127.0.0.1:$KP" > /dev/null 2>&1 &
BENCH_PIDS+=($!)
wait_port "$KP"
SERVED=$(ls -d "$WORK"/store/cache/serve/*/registry | head -1)
DP=$(free_port); registry "$SERVED" "$DP"
REPO="127.0.0.1_$SRC/bench"
# Copies land on tmpfs: the figure is the servers', not the page cache's writeback.
COPIES=$(mktemp -d /dev/shm/kiln-bench-copies.XXXXXX)
BENCH_CLEANUP+=("$COPIES")
copy_all() { # PORT
  for n in $(seq -w 0 19); do skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/$REPO/img$n:1" "dir:$COPIES/$1-$n" >/dev/null; done
  rm -rf "${COPIES:?}"/*
}
sync; sleep 5
# Both servers read the same files: warm the page cache so neither pays for the other.
find "$SERVED" -type f -exec cat {} + > /dev/null
# Alternate the two servers (each goes first in turn) and keep each one's best time.
from_kiln=999999; from_registry=999999
time_copy() { local t0 t1; t0=$(now); copy_all "$1"; t1=$(now); echo "$t1 - $t0" | bc; }
for round in 1 2 3; do
  if [ $((round % 2)) = 1 ]; then
    from_kiln=$(best "$(time_copy "$KP")" "$from_kiln"); from_registry=$(best "$(time_copy "$DP")" "$from_registry")
  else
    from_registry=$(best "$(time_copy "$DP")" "$from_registry"); from_kiln=$(best "$(time_copy "$KP")" "$from_kiln")
  fi
done

# The servers alone: every layer of every image fetched with curl (80 blobs), and each server's
# CPU time for it, read from /proc.
BLOB_URLS=()
for n in $(seq -w 0 19); do
  for b in $(ls "$SERVED/docker/registry/v2/repositories/$REPO/img$n/_layers/sha256/"); do BLOB_URLS+=("$REPO/img$n/blobs/sha256:$b"); done
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
curl_all() { for u in "${BLOB_URLS[@]}"; do curl -sf -o /dev/null "http://127.0.0.1:$1/v2/$u"; done; }
KILN_PID=$(lsof -t -iTCP:"$KP" -sTCP:LISTEN 2>/dev/null || ss -Hltnp "sport = :$KP" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
REG_PID=$(ss -Hltnp "sport = :$DP" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
http_kiln=999999; http_registry=999999
c0=$(cpu_ticks "$KILN_PID"); d0=$(cpu_ticks "$REG_PID")
for round in 1 2 3; do
  t0=$(now); curl_all "$KP"; t1=$(now); http_kiln=$(best "$(echo "$t1 - $t0" | bc)" "$http_kiln")
  t0=$(now); curl_all "$DP"; t1=$(now); http_registry=$(best "$(echo "$t1 - $t0" | bc)" "$http_registry")
done
cpu_kiln=$(( $(cpu_ticks "$KILN_PID") - c0 )); cpu_registry=$(( $(cpu_ticks "$REG_PID") - d0 ))

printf '\n%-60s %10s %10s %8s\n' "offline benchmark ($((TOTAL >> 20)) MiB, 20 images)" "kiln s" "peer s" "ratio"
printf '%-60s %10.2f %10.2f %8.2f\n' "cache 20 images: kiln build vs skopeo sync" "$kiln_cache" "$skopeo_sync" "$(echo "$kiln_cache / $skopeo_sync" | bc -l)"
printf '%-60s %10.2f %10.2f %8.2f\n' "skopeo copy out of: kiln registry serve vs docker-registry" "$from_kiln" "$from_registry" "$(echo "$from_kiln / $from_registry" | bc -l)"
printf '%-60s %10.2f %10.2f %8.2f\n' "curl every layer: kiln registry serve vs docker-registry" "$http_kiln" "$http_registry" "$(echo "$http_kiln / $http_registry" | bc -l)"
printf '%-60s %10d %10d %8.2f\n' "server CPU ticks for 3 curl rounds (1/100 s)" "$cpu_kiln" "$cpu_registry" "$(echo "$cpu_kiln / $cpu_registry" | bc -l)"
echo "targets: ratio <= 1.0 for the first two (skopeo's own work dominates the second; the curl rows isolate the servers)"

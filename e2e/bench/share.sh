#!/usr/bin/env bash
# make bench-share: push and pull a 1 GiB multi-layer image to a local docker-registry with
# kiln, beside skopeo copy of the same image in the same run. Prints wall times, the ratios
# kiln/skopeo (target <= 1.0 both ways) and kiln's peak RSS (target <= 150 MiB).
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-$ROOT/.bench/share}
IMAGE=bench.local/share/big:1
mkdir -p "$WORK"

. "$(dirname "$0")/lib.sh"
ARCHIVE=$WORK/image.tar
[ -f "$ARCHIVE" ] || echo "Generating a 1 GiB image (8 gzip layers of 128 MiB) in $ARCHIVE (cached)..."
oci_archive "$ARCHIVE" "$IMAGE" 1 128 128 128 128 128 128 128 128

STORE=$WORK/store
rm -rf "$STORE"
"$KILN" --root "$STORE" -q load -i "$ARCHIVE" >/dev/null
SIZE=$(du -sb "$STORE/oci/blobs" | cut -f1)
A=$(free_port); rm -rf "$WORK/reg-kiln"; start_registry "$WORK/reg-kiln" "$A" "$WORK/reg-kiln.yml"
B=$(free_port); rm -rf "$WORK/reg-skopeo"; start_registry "$WORK/reg-skopeo" "$B" "$WORK/reg-skopeo.yml"
sync

t0=$(now); /usr/bin/time -f %M -o "$WORK/rss-push" "$KILN" --root "$STORE" -q push --plain-http "$IMAGE" "127.0.0.1:$A/bench/big:1" >/dev/null; t1=$(now)
kiln_push=$(echo "$t1 - $t0" | bc)
t0=$(now); skopeo copy -q --dest-tls-verify=false "oci:$STORE/oci:$IMAGE" "docker://127.0.0.1:$B/bench/big:1"; t1=$(now)
skopeo_push=$(echo "$t1 - $t0" | bc)

rm -rf "$WORK/pull-kiln" "$WORK/pull-skopeo"
t0=$(now); /usr/bin/time -f %M -o "$WORK/rss-pull" "$KILN" --root "$WORK/pull-kiln" -q pull --plain-http "127.0.0.1:$A/bench/big:1" >/dev/null; t1=$(now)
kiln_pull=$(echo "$t1 - $t0" | bc)
t0=$(now); skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$B/bench/big:1" "oci:$WORK/pull-skopeo:x"; t1=$(now)
skopeo_pull=$(echo "$t1 - $t0" | bc)

printf '\n%-36s %10s %10s %8s %12s\n' "share benchmark ($((SIZE >> 20)) MiB, 8 layers)" "kiln s" "skopeo s" "ratio" "kiln RSS"
printf '%-36s %10.2f %10.2f %8.2f %9d MiB\n' "push to docker-registry (loopback)" "$kiln_push" "$skopeo_push" "$(echo "$kiln_push / $skopeo_push" | bc -l)" "$(( $(cat "$WORK/rss-push") / 1024 ))"
printf '%-36s %10.2f %10.2f %8.2f %9d MiB\n' "pull from docker-registry (loopback)" "$kiln_pull" "$skopeo_pull" "$(echo "$kiln_pull / $skopeo_pull" | bc -l)" "$(( $(cat "$WORK/rss-pull") / 1024 ))"
echo "targets: ratio <= 1.0 both ways, kiln peak RSS <= 150 MiB"

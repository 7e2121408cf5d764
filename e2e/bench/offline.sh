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
rm -rf "$WORK/store"; sync
t0=$(now); "$KILN" --root "$WORK/store" -q build -t bench.local/offline/cluster:1 --insecure-registry "127.0.0.1:$SRC" "$CTX" >/dev/null; t1=$(now)
kiln_cache=$(echo "$t1 - $t0" | bc)
{ echo "127.0.0.1:$SRC:"; echo "  tls-verify: false"; echo "  images:"; for n in $(seq -w 0 19); do echo "    bench/img$n: [\"1\"]"; done; } > "$WORK/sync.yaml"
rm -rf "$WORK/sync-out"; mkdir -p "$WORK/sync-out"; sync
t0=$(now); skopeo sync --src yaml --dest dir "$WORK/sync.yaml" "$WORK/sync-out" >/dev/null; t1=$(now)
skopeo_sync=$(echo "$t1 - $t0" | bc)

# (2) the same registry/ content served by kiln and by docker-registry.
KP=$(free_port)
"$KILN" --root "$WORK/store" registry serve --image bench.local/offline/cluster:1 --listen "127.0.0.1:$KP" > /dev/null 2>&1 &
BENCH_PIDS+=($!)
wait_port "$KP"
SERVED=$(ls -d "$WORK"/store/cache/serve/*/registry | head -1)
DP=$(free_port); registry "$SERVED" "$DP"
REPO="127.0.0.1_$SRC/bench"
copy_all() { # PORT
  for n in $(seq -w 0 19); do skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/$REPO/img$n:1" "dir:$WORK/copy-$1-$n" >/dev/null; done
}
rm -rf "$WORK"/copy-*; sync
# Both servers read the same files: warm the page cache so neither pays for the other.
find "$SERVED" -type f -exec cat {} + > /dev/null
# Alternate the two servers twice and keep each one's best time.
from_kiln=999999; from_registry=999999
for round in 1 2; do
  rm -rf "$WORK"/copy-*
  t0=$(now); copy_all "$KP"; t1=$(now); t=$(echo "$t1 - $t0" | bc); from_kiln=$(echo "if ($t < $from_kiln) $t else $from_kiln" | bc)
  rm -rf "$WORK"/copy-*
  t0=$(now); copy_all "$DP"; t1=$(now); t=$(echo "$t1 - $t0" | bc); from_registry=$(echo "if ($t < $from_registry) $t else $from_registry" | bc)
done

printf '\n%-52s %10s %10s %8s\n' "offline benchmark ($((TOTAL >> 20)) MiB, 20 images)" "kiln s" "peer s" "ratio"
printf '%-52s %10.2f %10.2f %8.2f\n' "cache 20 images: kiln build vs skopeo sync" "$kiln_cache" "$skopeo_sync" "$(echo "$kiln_cache / $skopeo_sync" | bc -l)"
printf '%-52s %10.2f %10.2f %8.2f\n' "skopeo copy out of: kiln registry serve vs docker-registry" "$from_kiln" "$from_registry" "$(echo "$from_kiln / $from_registry" | bc -l)"
echo "targets: ratio <= 1.0 for both"

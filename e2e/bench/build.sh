#!/usr/bin/env bash
# make bench-build: build a generated 1 GiB context (4 × 200 MiB files + 20 000 small files)
# and compare with the floor, `tar -c | gzip -6 | sha256sum` on the same tree, in the same run.
# Prints wall times, the ratio kiln/floor, peak RSS, and a cached rebuild.
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-$ROOT/.bench/build}
CTX=$WORK/ctx
STORE=$WORK/store
mkdir -p "$WORK"

if [ ! -f "$CTX/.complete" ]; then
  echo "Generating the benchmark context in $CTX (cached for later runs)..."
  rm -rf "$CTX"; mkdir -p "$CTX/big" "$CTX/small"
  # Two incompressible files (like bundled tarballs) and two text-like ones (like binaries).
  head -c 200M /dev/urandom > "$CTX/big/random-1.bin"
  head -c 200M /dev/urandom > "$CTX/big/random-2.bin"
  for n in 1 2; do
    # `head` closes the pipe early on purpose; that SIGPIPE is not a failure.
    (set +o pipefail; head -c 150M /dev/urandom | base64 -w 120 | head -c 200M > "$CTX/big/text-$n.txt")
  done
  python3 - "$CTX/small" <<'PY'
import os, sys, random
root = sys.argv[1]
rnd = random.Random(42)
words = [("w%d" % i) for i in range(5000)]
for d in range(200):
    dd = os.path.join(root, "d%03d" % d)
    os.makedirs(dd, exist_ok=True)
    for f in range(100):
        n = rnd.randint(2000, 18000)
        text = " ".join(rnd.choice(words) for _ in range(n // 6))
        with open(os.path.join(dd, "f%03d.yaml" % f), "w") as fh:
            fh.write(text[:n])
PY
  printf 'FROM scratch\nCOPY big big\nCOPY small small\n' > "$CTX/Kubefile"
  touch "$CTX/.complete"
fi
echo "Context: $(du -sh --apparent-size "$CTX" | cut -f1), $(find "$CTX" -type f | wc -l) files"
sync

now() { date +%s.%N; }
# Warm the page cache for both contestants alike.
cat $(find "$CTX/big" -type f) > /dev/null; find "$CTX/small" -type f -exec cat {} + > /dev/null

t0=$(now)
tar -C "$CTX" --exclude=.complete -cf - big small | gzip -6 | sha256sum > /dev/null
t1=$(now)
floor=$(echo "$t1 - $t0" | bc)

rm -rf "$STORE"
t0=$(now)
/usr/bin/time -f "%M" -o "$WORK/rss-full" "$KILN" --root "$STORE" -q build -t bench:1 "$CTX" > /dev/null
t1=$(now)
full=$(echo "$t1 - $t0" | bc)
rss_full=$(( $(cat "$WORK/rss-full") / 1024 ))

t0=$(now)
/usr/bin/time -f "%M" -o "$WORK/rss-cached" "$KILN" --root "$STORE" -q build -t bench:1 "$CTX" > /dev/null
t1=$(now)
cached=$(echo "$t1 - $t0" | bc)
rss_cached=$(( $(cat "$WORK/rss-cached") / 1024 ))

printf '\n%-42s %10s %12s\n' "build benchmark (1 GiB context)" "wall s" "peak RSS"
printf '%-42s %10.2f %12s\n' "floor: tar -c | gzip -6 | sha256sum" "$floor" "-"
printf '%-42s %10.2f %9d MiB\n' "kiln build (gzip -6, no cache)" "$full" "$rss_full"
printf '%-42s %10.2f %9d MiB\n' "kiln build (cached rebuild)" "$cached" "$rss_cached"
printf '\nratio kiln/floor: %.2f (target <= 1.0)\n' "$(echo "$full / $floor" | bc -l)"
printf 'cached/full:      %.3f (target <= 0.10)\n' "$(echo "$cached / $full" | bc -l)"
printf 'peak RSS:         %d MiB (target <= 200)\n' "$rss_full"

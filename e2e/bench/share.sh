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

ARCHIVE=$WORK/image.tar
if [ ! -f "$ARCHIVE" ]; then
  echo "Generating a 1 GiB image (8 gzip layers of 128 MiB) in $ARCHIVE (cached)..."
  python3 - "$WORK/layout" "$IMAGE" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
root, name = sys.argv[1], sys.argv[2]
blobs = os.path.join(root, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d
layers, diff_ids = [], []
for i in range(8):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        payload = os.urandom(128 << 20)
        info = tarfile.TarInfo("layer-%d.bin" % i)
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))
    raw = raw.getvalue()
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    gz = gzip.compress(raw, compresslevel=1, mtime=0)
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(gz), "size": len(gz)})
config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
    "layers": layers}).encode()
md = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
    "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": name}}]}, open(os.path.join(root, "index.json"), "w"))
open(os.path.join(root, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
  tar -C "$WORK/layout" -cf "$ARCHIVE.tmp" . && mv "$ARCHIVE.tmp" "$ARCHIVE" && rm -rf "$WORK/layout"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_registry() { # DIR -> prints port
  local dir=$1 port; port=$(free_port)
  rm -rf "$dir"; mkdir -p "$dir"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: 127.0.0.1:%s\n' "$dir" "$port" > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" > "$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  echo "$port"
}
cleanup() { for d in "$WORK"/reg-*; do [ -f "$d/pid" ] && kill "$(cat "$d/pid")" 2>/dev/null || true; done; }
trap cleanup EXIT

STORE=$WORK/store
rm -rf "$STORE"
"$KILN" --root "$STORE" -q load -i "$ARCHIVE" >/dev/null
SIZE=$(du -sb "$STORE/oci/blobs" | cut -f1)
A=$(start_registry "$WORK/reg-kiln")
B=$(start_registry "$WORK/reg-skopeo")
now() { date +%s.%N; }
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

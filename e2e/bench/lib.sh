# Shared helpers for the benchmark scripts (sourced, not run).

now() { date +%s.%N; }
# best A B: the smaller of two times.
best() { echo "if ($1 < $2) $1 else $2" | bc; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

BENCH_PIDS=()
BENCH_CLEANUP=()
stop_servers() {
  for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${BENCH_CLEANUP[@]}"; do rm -rf "$d"; done
}
trap stop_servers EXIT

# wait_port PORT: until something listens on 127.0.0.1:PORT (20 s at most).
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# start_registry DATA_DIR PORT CONFIG_FILE: Debian's docker-registry on loopback.
start_registry() {
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$1" "$2" > "$3"
  docker-registry serve "$3" > /dev/null 2>&1 &
  BENCH_PIDS+=($!)
  wait_port "$2"
}

# oci_archive ARCHIVE NAME_FORMAT COUNT LAYER_SIZE_MIB...: generated once, then cached.
oci_archive() {
  local archive=$1; shift
  [ -f "$archive" ] && return 0
  local layout="$archive.layout"
  rm -rf "$layout"
  python3 "$(dirname "${BASH_SOURCE[0]}")/gen_layout.py" "$layout" "$@"
  tar -C "$layout" -cf "$archive.tmp" . && mv "$archive.tmp" "$archive" && rm -rf "$layout"
}

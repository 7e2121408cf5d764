# Shared helpers for the e2e scenario scripts (sourced, not run). Expects $HOSTS (hosts.sh).

passed=0
failed=0
# check DESCRIPTION COMMAND...: runs COMMAND and counts it as passed or failed.
check() {
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); printf 'ok     %s\n' "$what"
  else failed=$((failed + 1)); printf 'FAILED %s\n' "$what"; fi
}
on() { "$HOSTS" ssh "$@"; }

# up_hosts: 2 amd64 + 1 arm64 test hosts; sets INV, KEY, H1, H2, H3.
up_hosts() {
  "$HOSTS" up --hosts 3 --arch amd64,amd64,arm64 >/dev/null || { echo "0 passed, 1 failed (hosts did not come up)"; exit 1; }
  INV=$("$HOSTS" inventory)
  KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ssh_key"])' "$INV")
  H1=$(ip_of kiln-h1); H2=$(ip_of kiln-h2); H3=$(ip_of kiln-h3)
}
ip_of() { python3 -c 'import json,sys; print([h["ip"] for h in json.load(open(sys.argv[1]))["hosts"] if h["name"]==sys.argv[2]][0])' "$INV" "$1"; }

# finish: prints the tally and exits non-zero if anything failed.
finish() {
  echo
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}

# snapshot HOST...: a hash of what `kiln delete` must restore: every path, type, mode and file
# content under /etc, /usr/bin, /usr/local/bin and /var/lib/kiln, and the sysctl values.
snapshot() {
  for h in "$@"; do
    on "$h" -- "find /etc /usr/bin /usr/local/bin /var/lib/kiln -xdev -printf '%p %y %m\n' 2>/dev/null | sort
      find /etc /usr/bin /usr/local/bin /var/lib/kiln -xdev -type f -exec sha256sum {} + 2>/dev/null | sort
      sysctl -a 2>/dev/null | grep -v -e random -e ns_last_pid -e stat -e dentry -e inode-nr -e file-nr -e inode-state | sort" 2>/dev/null
  done | sha256sum
}

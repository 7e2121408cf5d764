#!/bin/bash
# kiln scale-down: the etcd member of the leaving host ($LeavingHostIP) is removed through
# master0 (after a master0 removal, $Master0IP is already its successor). Runs on the leaving
# host, or on master0 when that host cannot be reached (`--force`); the member's data goes
# with the host's clean.sh.
set -euo pipefail
export ETCDCTL_API=3
PEER="http://$LeavingHostIP:2380"
SEED="http://$Master0IP:2379"
ID=$(etcdctl --endpoints "$SEED" member list | awk -F', ' -v peer="$PEER" '$4 == peer { print $1 }')
if [ -z "$ID" ]; then
  echo "no etcd member on $LeavingHostIP (already removed)"
  exit 0
fi
# etcd refuses a member change until the last one has settled: retry.
for attempt in $(seq 30); do
  etcdctl --endpoints "$SEED" member remove "$ID" >/dev/null 2>&1 && break
  [ "$attempt" = 30 ] && { echo "etcd would not remove member $ID ($PEER)" >&2; exit 1; }
  sleep 2
done
if [ "$HostIP" = "$LeavingHostIP" ]; then
  systemctl disable --now kiln-etcd >/dev/null 2>&1 || true
fi
echo "etcd member $ID ($PEER) removed"

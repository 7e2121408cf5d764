#!/bin/bash
# Another master: registered as a member through master0, then started (resumable: a member
# already added but not started is reused).
set -euo pipefail
. "$(dirname "$0")/etcd-common.sh"
export ETCDCTL_API=3
if systemctl is-active --quiet kiln-etcd && wait_healthy; then exit 0; fi
SEED="http://$Master0IP:2379"
# etcd refuses a member change until the last one has settled ("unhealthy cluster"): retry.
for attempt in $(seq 30); do
  etcdctl --endpoints "$SEED" member list | grep -q "$PEER" && break
  etcdctl --endpoints "$SEED" member add "$NAME" --peer-urls="$PEER" >/dev/null 2>&1 && break
  [ "$attempt" = 30 ] && { echo "etcd would not add member $NAME" >&2; exit 1; }
  sleep 2
done
# The initial cluster is every member: started ones by name, this one (unstarted) as NAME.
INITIAL=$(etcdctl --endpoints "$SEED" member list | awk -F', ' -v me="$NAME" -v peer="$PEER" \
  '{ name = ($3 == "" && $4 == peer) ? me : $3; if (name != "") printf "%s%s=%s", sep, name, $4; sep = "," }')
rm -rf "$DATA"
write_unit "$INITIAL" existing
wait_healthy
echo "etcd member $NAME joined"

#!/bin/bash
# master0: a new one-member etcd cluster (other masters join it one at a time).
set -euo pipefail
. "$(dirname "$0")/etcd-common.sh"
if systemctl is-active --quiet kiln-etcd; then wait_healthy; exit 0; fi
write_unit "$NAME=$PEER" new
wait_healthy
echo "etcd started on $HostIP (master0)"

#!/bin/bash
# Shared by the etcd scripts: install the binaries and write the unit.
set -euo pipefail
ROOTFS=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME="etcd-${HostIP//[.:]/-}"
PEER="http://$HostIP:2380"
CLIENT="http://$HostIP:2379"
DATA=/var/lib/kiln-etcd
install -m 0755 "$ROOTFS/bin/etcd" "$ROOTFS/bin/etcdctl" /usr/local/bin/

# write_unit INITIAL_CLUSTER STATE
write_unit() {
  local arch_env=""
  [ "$(uname -m)" = aarch64 ] && arch_env="Environment=ETCD_UNSUPPORTED_ARCH=arm64"
  cat > /etc/systemd/system/kiln-etcd.service <<UNIT
[Unit]
Description=etcd member $NAME (installed by kiln)
After=network.target
[Service]
$arch_env
ExecStart=/usr/local/bin/etcd --name $NAME --data-dir $DATA \
  --listen-peer-urls $PEER --initial-advertise-peer-urls $PEER \
  --listen-client-urls $CLIENT,http://127.0.0.1:2379 --advertise-client-urls $CLIENT \
  --initial-cluster $1 --initial-cluster-state $2
Restart=always
RestartSec=2
[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable kiln-etcd >/dev/null 2>&1
  systemctl restart kiln-etcd
}

wait_healthy() {
  for _ in $(seq 150); do
    ETCDCTL_API=3 etcdctl --endpoints "$CLIENT" endpoint health >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "etcd on $HostIP did not become healthy" >&2
  journalctl -u kiln-etcd --no-pager -n 20 >&2 || true
  return 1
}

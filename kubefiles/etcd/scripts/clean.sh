#!/bin/bash
# Undoes the etcd scripts and the base's registry (kiln delete runs it on every host).
systemctl disable --now kiln-etcd >/dev/null 2>&1 || true
rm -f /etc/systemd/system/kiln-etcd.service /usr/local/bin/etcd /usr/local/bin/etcdctl
rm -rf /var/lib/kiln-etcd
systemctl daemon-reload
bash "$(dirname "$0")/clean-registry.sh"

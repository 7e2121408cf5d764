#!/bin/bash
# See plugin.yaml. The snapshot is written to $PluginOutDir, which kiln brings back.
set -euo pipefail
export ETCDCTL_API=3
# A whole cluster being deleted was saved once by `pre-uninstall`; its masters' cleanups need
# no snapshot each.
if [ "$PluginPhase" = pre-clean-host ] && [ "${KilnOperation:-}" = delete ]; then
  exit 0
fi
command -v etcdctl >/dev/null || PATH=$PATH:$PWD/../../bin
command -v etcdctl >/dev/null || { echo "etcd-backup: no etcdctl on $HostIP, nothing was saved" >&2; exit 1; }
if [ -f /etc/kubernetes/pki/etcd/ca.crt ]; then
  args=(--endpoints "${EtcdEndpoints:-https://127.0.0.1:2379}" --cacert /etc/kubernetes/pki/etcd/ca.crt
        --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt --key /etc/kubernetes/pki/etcd/healthcheck-client.key)
else
  args=(--endpoints "${EtcdEndpoints:-http://$HostIP:2379}")
fi
file="$PluginOutDir/etcd-$HostIP-$PluginPhase.db"
# A member that cannot answer must not hold the operation up for ever.
timeout "${EtcdBackupTimeout:-300}" etcdctl --dial-timeout=10s "${args[@]}" snapshot save "$file" >/dev/null
etcdctl snapshot status "$file" -w simple
echo "etcd-backup: snapshot of $HostIP before $KilnOperation ($(du -h "$file" | cut -f1))"

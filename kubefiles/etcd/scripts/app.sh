#!/bin/bash
# The launch command (CMDS), on master0: records the delivery in etcd and shows the members.
set -euo pipefail
export ETCDCTL_API=3
etcdctl --endpoints "http://$HostIP:2379" put kiln-demo/delivered "cluster $ClusterName delivered by kiln" >/dev/null
etcdctl --endpoints "http://$HostIP:2379" member list -w table

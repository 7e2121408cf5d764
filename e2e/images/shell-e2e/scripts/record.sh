#!/bin/bash
# record.sh STEP: appends what this host saw to /var/lib/kiln-e2e-shell/log.
set -eu
mkdir -p /var/lib/kiln-e2e-shell
printf '%s %s host=%s role=%s master0=%s masters=%s nodes=%s cluster=%s arch=%s\n' \
  "$(date +%s.%N)" "$1" "$HostIP" "$Role" "$Master0IP" "$MasterIPs" "$NodeIPs" "$ClusterName" \
  "$(cat "$RootfsDir/bin/built-for")" >> /var/lib/kiln-e2e-shell/log

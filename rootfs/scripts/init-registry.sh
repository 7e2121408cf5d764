#!/bin/bash
# init-registry.sh PORT DATADIR DOMAIN (Sealer's contract): serves DATADIR (the image's
# registry/ content, docker-distribution layout) on PORT with Debian's docker-registry.
# TLS when kiln put certs/DOMAIN.{crt,key} in the rootfs (not `insecure`), basic auth when it
# put etc/registry_htpasswd there: Sealer's places for both.
set -euo pipefail
PORT=$1 DATADIR=$2 DOMAIN=$3
ROOTFS=$(cd "$(dirname "$0")/.." && pwd)
CERT=$ROOTFS/certs/$DOMAIN.crt KEY=$ROOTFS/certs/$DOMAIN.key HTPASSWD=$ROOTFS/etc/registry_htpasswd
TLS="" AUTH=""
if [ -f "$CERT" ] && [ -f "$KEY" ]; then
  TLS="  tls:
    certificate: $CERT
    key: $KEY"
fi
if [ -f "$HTPASSWD" ]; then
  AUTH="auth:
  htpasswd:
    realm: $DOMAIN
    path: $HTPASSWD"
fi
install -m 0755 "$ROOTFS/bin/registry" /usr/local/bin/kiln-registry
mkdir -p /etc/kiln-registry
cat > /etc/kiln-registry/config.yml <<CONFIG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DATADIR
  maintenance:
    readonly:
      enabled: true
http:
  addr: :$PORT
$TLS
$AUTH
CONFIG
cat > /etc/systemd/system/kiln-registry.service <<UNIT
[Unit]
Description=in-cluster registry for $DOMAIN (installed by kiln)
After=network.target
[Service]
ExecStart=/usr/local/bin/kiln-registry serve /etc/kiln-registry/config.yml
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable kiln-registry >/dev/null 2>&1
systemctl restart kiln-registry
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && exit 0; sleep 0.2; done
echo "the registry did not start on port $PORT" >&2; journalctl -u kiln-registry --no-pager -n 20 >&2 || true; exit 1

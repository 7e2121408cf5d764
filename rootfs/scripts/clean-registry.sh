#!/bin/bash
# Undoes init-registry.sh.
systemctl disable --now kiln-registry >/dev/null 2>&1 || true
rm -f /etc/systemd/system/kiln-registry.service /usr/local/bin/kiln-registry
rm -rf /etc/kiln-registry
systemctl daemon-reload

#!/bin/bash
set -eu
# Fails on demand, for the resume test.
[ ! -e /tmp/kiln-e2e-fail-init ] || { echo "init-master0: asked to fail" >&2; exit 3; }
bash "$(dirname "$0")/record.sh" init-master0

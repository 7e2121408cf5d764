#!/bin/bash
# Slow on demand, so the fault test can cut the host off mid-step.
if [ -e /tmp/kiln-e2e-slow-join ]; then touch /tmp/kiln-e2e-join-started; sleep 60; fi
exec bash "$(dirname "$0")/record.sh" join-node

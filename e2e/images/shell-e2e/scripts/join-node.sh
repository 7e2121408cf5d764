#!/bin/bash
# Slow on demand, so the fault test can cut the host off mid-step.
if [ -e /tmp/kiln-e2e-slow-join ]; then touch /tmp/kiln-e2e-join-started; sleep 60; fi
# Two lines 3 s apart: the run test checks kiln shows each as it is printed.
echo "join-node: started"
sleep 3
echo "join-node: finished"
exec bash "$(dirname "$0")/record.sh" join-node

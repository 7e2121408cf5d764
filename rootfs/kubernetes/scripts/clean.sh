#!/bin/bash
# The Kubernetes base image's clean script (kiln delete runs scripts/clean.sh): flannel's
# netfilter tables, the kubelet and tools, then the in-cluster registry. Images built on top
# that add their own clean.sh should call these three as well.
set -euo pipefail
cd "$(dirname "$0")"
bash clean-flannel.sh
bash clean-kube.sh
bash clean-registry.sh

#!/usr/bin/env bash
# make demo: build the multi-arch demo cluster image with kiln and show what it holds.
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export KILN_ROOT=${KILN_ROOT:-$ROOT/.demo/store}
IMAGE=kiln.local/demo:0.1

echo "==> kiln build (linux/amd64 + linux/arm64)"
# --build-mode lite: the demo's web app names docker.io/library/nginx, which this offline
# machine cannot fetch; the run demo (issue 6) caches its images from a local registry.
"$KILN" build -t "$IMAGE" --build-mode lite --platform linux/amd64,linux/arm64 "$ROOT/kubefiles/demo"
echo
echo "==> kiln images"
"$KILN" images
echo
echo "==> what each platform launches"
"$KILN" inspect "$IMAGE" | python3 -c '
import json, sys
img = json.load(sys.stdin)
for p in img["platforms"]:
    ext = p["imageExtension"]
    names = ", ".join(ext["launch"]["app_names"])
    print("%s: launch [%s], %d layers" % (p["platform"], names, len(p["manifest"]["layers"])))
    for cmd in p["appLaunchCommands"]:
        print("   ", cmd)
'
echo
echo "==> kiln save (for the USB stick) and a rebuild from cache"
"$KILN" save -o "$ROOT/.demo/demo.tar" "$IMAGE"
"$KILN" build -t "$IMAGE" --build-mode lite --platform linux/amd64,linux/arm64 "$ROOT/kubefiles/demo" 2>&1 | grep "^Built"
echo
echo "==> test hosts: 2 amd64 + 1 arm64 (systemd, sshd, own IPs; see docs/TESTING.md)"
"$ROOT/e2e/hosts.sh" up --hosts 3 --arch amd64,amd64,arm64
"$ROOT/e2e/hosts.sh" status
for h in kiln-h1 kiln-h2 kiln-h3; do
  printf '%s: ' "$h"; "$ROOT/e2e/hosts.sh" ssh "$h" -- 'echo "$(uname -m), systemd $(systemctl is-system-running)"'
done
echo
echo "kiln run (delivering the image onto these hosts) arrives with issue 6."
echo "The store is an OCI layout: skopeo inspect --raw oci:$KILN_ROOT/oci:$IMAGE"

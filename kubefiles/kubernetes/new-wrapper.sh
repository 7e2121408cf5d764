#!/usr/bin/env bash
# kubefiles/kubernetes/new-wrapper.sh COMPONENT VERSION: writes the wrapper module
# go/COMPONENT-VERSION/ (go.mod with the component's packages as tools, go.sum from
# `go mod tidy`) that build.sh builds from. Run it once per new version, then commit the two
# files: they pin every dependency by checksum.
#   kubefiles/kubernetes/new-wrapper.sh kubernetes v1.38.0
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=components.sh
. "$HERE/components.sh"
name=${1:?usage: new-wrapper.sh COMPONENT VERSION}
version=${2:?usage: new-wrapper.sh COMPONENT VERSION}
MODULE_TIME=unused component "$name" "$version"
dir=$HERE/go/$name-$version
mkdir -p "$dir"
{
  echo "// Wrapper module: pins $MODULE $version and everything it needs (go.sum);"
  echo "// kubefiles/kubernetes/build.sh builds the tools below from it."
  echo "module kiln.build/$name"
  echo
  echo "go 1.26.0"
  echo
  echo "tool ("
  for entry in $PACKAGES; do printf '\t%s\n' "${entry#*=}"; done
  echo ")"
  echo
  echo "require ("
  printf '\t%s %s\n' "$MODULE" "$version"
  for extra in $EXTRA_MODULES; do printf '\t%s %s\n' "$extra" "$version"; done
  echo ")"
  if [ "$MODULE" = k8s.io/kubernetes ]; then
    # k8s.io/kubernetes replaces its staging modules with its own tree, which a dependent module
    # cannot see: pin each to the same release (v1.X.Y -> v0.X.Y).
    mod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    echo
    echo "replace ("
    grep -E '=> ./staging/' "$mod" | awk -v v="v0.${version#v1.}" '{printf "\t%s => %s %s\n", $1, $1, v}'
    echo ")"
  fi
} > "$dir/go.mod"
# A patched component (PATCH in components.sh) imports less than its module as published: tidy
# then keeps going past the packages only the unpatched source needs.
(cd "$dir" && go mod tidy ${PATCH:+-e})
echo "Wrote $dir/go.mod and go.sum"

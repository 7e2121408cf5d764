# Sourced by prepare.sh and kubernetes/build.sh: Debian packages of another architecture without
# touching this machine's apt (a private apt state per architecture under $DEBIAN_CACHE).
#   debian_download ARCH DIR PACKAGE...   the packages themselves into DIR
#   debian_closure ARCH DIR PACKAGE...    the packages and everything they depend on into DIR
#   debian_extract DEB... DEST            unpack .deb files into DEST (no maintainer scripts)
#   debian_version ARCH PACKAGE           the version apt would fetch
DEBIAN_MIRROR=${KILN_DEMO_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SUITE=bookworm

debian_apt_opts() { # ARCH: prints the apt-get options of the private state, one per line
  local arch=$1 apt=$DEBIAN_CACHE/apt-$1
  if [ ! -f "$apt/lists/.updated" ]; then
    mkdir -p "$apt"/{lists/partial,cache/archives/partial,etc/preferences.d,etc/apt.conf.d}
    echo "deb [arch=$arch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $DEBIAN_SUITE main" \
      > "$apt/etc/sources.list"
    : > "$apt/status"
  fi
  printf '%s\n' -o "APT::Architecture=$arch" -o "APT::Architectures=$arch" -o "Dir::State=$apt" \
    -o "Dir::State::Lists=$apt/lists" -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache" \
    -o "Dir::Etc::SourceList=$apt/etc/sources.list" -o "Dir::Etc::SourceParts=/nonexistent" \
    -o "Dir::Etc::Preferences=/nonexistent" -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d" \
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
}

debian_update() { # ARCH: package lists at most a day old (a point release removes old .debs)
  local apt=$DEBIAN_CACHE/apt-$1 opts
  mapfile -t opts < <(debian_apt_opts "$1")
  if [ -z "$(find "$apt/lists/.updated" -mmin -1440 2>/dev/null)" ]; then
    apt-get "${opts[@]}" -qq update
    touch "$apt/lists/.updated"
  fi
}

debian_download() { # ARCH DIR PACKAGE...
  local arch=$1 dir=$2 opts
  shift 2
  debian_update "$arch"
  mapfile -t opts < <(debian_apt_opts "$arch")
  mkdir -p "$dir"
  (cd "$dir" && apt-get "${opts[@]}" -qq download "$@")
}

debian_closure() { # ARCH DIR PACKAGE...: with an empty dpkg status every dependency is fetched
  local arch=$1 dir=$2 opts
  shift 2
  debian_update "$arch"
  mapfile -t opts < <(debian_apt_opts "$arch")
  mkdir -p "$dir"
  apt-get "${opts[@]}" -qq -y --no-install-recommends -o "Dir::Cache::archives=$dir" install --download-only "$@" >/dev/null
  rm -f "$dir/lock"
  rm -rf "$dir/partial"
}

debian_extract() { # DEB... DEST
  local dest=${!#} deb
  mkdir -p "$dest"
  for deb in "${@:1:$#-1}"; do dpkg-deb -x "$deb" "$dest"; done
}

debian_version() { # ARCH PACKAGE
  local opts
  debian_update "$1"
  mapfile -t opts < <(debian_apt_opts "$1")
  apt-cache "${opts[@]}" show --no-all-versions "$2" | sed -n 's/^Version: //p' | head -1
}

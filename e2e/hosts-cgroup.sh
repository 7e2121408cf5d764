# Sourced by hosts.sh: each container host's own cgroups. systemd-nspawn gives a host a cgroup
# namespace rooted wherever nspawn itself runs, and on this machine (no systemd to hand out a
# scope) that is the root of every hierarchy: all hosts shared one tree. Their systemds made
# and removed the same system.slice and kubepods.slice, and fought over nspawn's one `payload`
# cgroup, which surfaced as kubelets' "Timed out while waiting for systemd to create/remove
# kubepods-…slice" and systemd's "Failed to migrate controller cgroups". So each host starts
# in a cgroup of its own in every hierarchy, $HOST_CGROUP_PARENT/NAME, as a Docker or Podman
# container does (kind's nodes get theirs from the engine), and power-off removes it.

HOST_CGROUP_PARENT=kiln-e2e

# The mount point of every cgroup hierarchy this machine has: the cgroup v1 controllers, the
# name=systemd one and cgroup2 (hybrid's /sys/fs/cgroup/unified or a unified /sys/fs/cgroup).
cgroup_hierarchies() {
  # mountinfo: optional fields end at "-", which the file system type follows.
  awk '{ for (i = 7; $i != "-"; i++) {}; if ($(i + 1) ~ /^cgroup2?$/) print $5 }' /proc/self/mountinfo
}

host_cgroup_dirs() { # NAME
  local hierarchy
  for hierarchy in $(cgroup_hierarchies); do printf '%s/%s/%s\n' "$hierarchy" "$HOST_CGROUP_PARENT" "$1"; done
}

# Makes DIR and any missing parents below the hierarchy's root; a new cpuset cgroup has no CPUs
# or memory nodes until given its parent's.
make_cgroup() { # DIR
  local dir=$1 parent=${1%/*}
  [ -d "$dir" ] && return 0
  make_cgroup "$parent"
  mkdir "$dir"
  if [ -f "$dir/cpuset.cpus" ]; then
    cat "$parent/cpuset.cpus" > "$dir/cpuset.cpus"
    cat "$parent/cpuset.mems" > "$dir/cpuset.mems"
  fi
}

# Moves the calling shell ($BASHPID) into NAME's cgroups: run it in the subshell that then
# execs systemd-nspawn, so the host's cgroup namespace is rooted there.
enter_host_cgroups() { # NAME
  local dir
  for dir in $(host_cgroup_dirs "$1"); do
    make_cgroup "$dir"
    echo "$BASHPID" > "$dir/cgroup.procs"
  done
}

# Removes NAME's cgroups, deepest first, once the host's processes are gone (the kernel reaps a
# killed PID namespace asynchronously, so an emptied cgroup may stay busy for a moment).
remove_host_cgroups() { # NAME
  local dir
  for dir in $(host_cgroup_dirs "$1"); do
    [ -d "$dir" ] || continue
    for _ in $(seq 50); do
      find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
      [ -d "$dir" ] || break
      sleep 0.1
    done
    [ -d "$dir" ] && log "warning: cgroup $dir is still in use; left in place"
  done
  return 0
}

remove_host_cgroup_parent() {
  local hierarchy
  for hierarchy in $(cgroup_hierarchies); do rmdir "$hierarchy/$HOST_CGROUP_PARENT" 2>/dev/null || true; done
}

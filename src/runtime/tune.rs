//! OS and kernel tuning as data from the image's rootfs, applied idempotently, with what it
//! changes recorded on the host so `kiln delete` can put everything back:
//!
//! - `etc/sysctl.d/*.conf` → `/etc/sysctl.d/90-kiln-<name>` and applied (previous values saved);
//! - `etc/modules-load.d/*.conf` → `/etc/modules-load.d/kiln-<name>` and loaded;
//! - `etc/kiln/sysctl-restore.list`: keys the cluster's components set themselves (kube-proxy,
//!   the kubelet), only recorded so `kiln delete` restores them;
//! - `etc/security/limits.d/*.conf` → `/etc/security/limits.d/kiln-<name>`;
//! - the kernel modules loaded before (`/proc/modules`), so `kiln delete` unloads those the
//!   cluster's components made the kernel load (vxlan, nf_tables, ip_vs, ...) once unused;
//! - swap off, with `/etc/fstab` swap lines commented (`#kiln-swap# `);
//! - SELinux to permissive and firewalld/ufw stopped, when present and on.
//!
//! The record lives in `<cluster>/.kiln/tune/` and is written only the first time, so a re-run
//! never overwrites the original values with tuned ones.

use crate::ssh::quote;

/// The script that tunes a host; `dir` is the cluster directory, `rootfs` its rootfs.
pub fn apply_script(dir: &str, rootfs: &str) -> String {
    let record = quote(&format!("{dir}/.kiln/tune"));
    let rootfs = quote(rootfs);
    format!(
        r#"set -e
R={record}; ROOTFS={rootfs}
first=0; [ -d "$R" ] || first=1
mkdir -p "$R"
if [ "$first" = 1 ]; then
  : > "$R/sysctl.before"; : > "$R/modules.before"; : > "$R/services.before"
  cat /proc/swaps | awk 'NR>1 {{print $1}}' > "$R/swaps.before"
  awk '{{print $1}}' /proc/modules > "$R/modules.loaded" 2>/dev/null || true
  if command -v getenforce >/dev/null 2>&1; then getenforce > "$R/selinux.before"; fi
fi
# Modules first: sysctls such as net.bridge.* exist only once theirs (br_netfilter) is loaded.
for f in "$ROOTFS"/etc/modules-load.d/*.conf; do
  [ -f "$f" ] || continue
  cp "$f" "/etc/modules-load.d/kiln-$(basename "$f")"
  sed -e 's/#.*//' "$f" | while read -r m; do
    [ -n "$m" ] || continue
    if [ -d "/sys/module/$m" ] || grep -qs "/$m\.ko" "/lib/modules/$(uname -r)/modules.builtin"; then continue; fi
    if modprobe "$m"; then
      grep -qx "$m" "$R/modules.before" || echo "$m" >> "$R/modules.before"
    else
      # IPVS is optional: without it preflight moved kube-proxy and the apiserver VIP off it.
      case $m in ip_vs*) echo "kernel module $m is not available (IPVS unused)" >&2; continue ;; esac
      echo "kernel module $m cannot be loaded" >&2; exit 1
    fi
  done
done
for f in "$ROOTFS"/etc/sysctl.d/*.conf; do
  [ -f "$f" ] || continue
  sed -e 's/#.*//' -e 's/;.*//' "$f" | awk -F= 'NF>=2 {{gsub(/[ \t]/,"",$1); print $1}}' | while read -r key; do
    [ -n "$key" ] || continue
    grep -q "^$key=" "$R/sysctl.before" 2>/dev/null || echo "$key=$(sysctl -n "$key" 2>/dev/null)" >> "$R/sysctl.before"
  done
  cp "$f" "/etc/sysctl.d/90-kiln-$(basename "$f")"
  sysctl -q -p "/etc/sysctl.d/90-kiln-$(basename "$f")"
done
# Sysctls the cluster's own components set later: recorded (the ones this host has, after its
# modules loaded) before they ever ran.
if [ "$first" = 1 ] && [ -f "$ROOTFS/etc/kiln/sysctl-restore.list" ]; then
  sed -e 's/#.*//' "$ROOTFS/etc/kiln/sysctl-restore.list" | while read -r key; do
    [ -n "$key" ] || continue
    grep -q "^$key=" "$R/sysctl.before" && continue
    value=$(sysctl -n "$key" 2>/dev/null) || continue
    echo "$key=$value" >> "$R/sysctl.before"
  done
fi
if [ -d /etc/security/limits.d ]; then
  for f in "$ROOTFS"/etc/security/limits.d/*.conf; do
    [ -f "$f" ] && cp "$f" "/etc/security/limits.d/kiln-$(basename "$f")"
  done
fi
swapoff -a 2>/dev/null || true
if [ -f /etc/fstab ] && grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab; then
  sed -i -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/#kiln-swap# \1/' /etc/fstab
fi
if command -v getenforce >/dev/null 2>&1 && [ "$(getenforce)" = Enforcing ]; then
  setenforce 0
  [ -f /etc/selinux/config ] && sed -i 's/^SELINUX=enforcing/SELINUX=permissive #kiln-selinux#/' /etc/selinux/config
fi
for svc in firewalld ufw; do
  if systemctl is-active --quiet "$svc" 2>/dev/null; then
    grep -qx "$svc" "$R/services.before" || echo "$svc" >> "$R/services.before"
    systemctl disable --now "$svc" >/dev/null 2>&1
  fi
done
"#
    )
}

/// The script that undoes [`apply_script`] from its record (nothing happens without one).
pub fn restore_script(dir: &str) -> String {
    let record = quote(&format!("{dir}/.kiln/tune"));
    format!(
        r#"R={record}
rm -f /etc/sysctl.d/90-kiln-* /etc/modules-load.d/kiln-* /etc/security/limits.d/kiln-* 2>/dev/null
[ -d "$R" ] || exit 0
if [ -f "$R/sysctl.before" ]; then
  while IFS= read -r line; do
    key=${{line%%=*}}; value=${{line#*=}}
    [ -n "$value" ] && sysctl -q -w "$key=$value" >/dev/null 2>&1 || true
  done < "$R/sysctl.before"
fi
if [ -f "$R/modules.before" ]; then
  while read -r m; do [ -n "$m" ] && modprobe -r "$m" 2>/dev/null || true; done < "$R/modules.before"
fi
# Modules loaded since (on demand, by the cluster's components) that nothing uses any more; a
# module freed by another's removal goes in a later pass.
if [ -f "$R/modules.loaded" ] && [ -r /proc/modules ]; then
  for pass in 1 2 3 4 5 6; do
    unloaded=0
    for m in $(awk '$3 == 0 {{print $1}}' /proc/modules); do
      grep -qx "$m" "$R/modules.loaded" && continue
      rmmod "$m" 2>/dev/null && unloaded=1
    done
    [ "$unloaded" = 1 ] || break
  done
fi
[ -f /etc/fstab ] && sed -i 's/^#kiln-swap# //' /etc/fstab
if [ -s "$R/swaps.before" ]; then while read -r s; do swapon "$s" 2>/dev/null || true; done < "$R/swaps.before"; fi
if [ -f "$R/selinux.before" ] && [ "$(cat "$R/selinux.before")" = Enforcing ]; then
  [ -f /etc/selinux/config ] && sed -i 's/^SELINUX=permissive #kiln-selinux#/SELINUX=enforcing/' /etc/selinux/config
  setenforce 1 2>/dev/null || true
fi
if [ -f "$R/services.before" ]; then
  while read -r svc; do [ -n "$svc" ] && systemctl enable --now "$svc" >/dev/null 2>&1 || true; done < "$R/services.before"
fi
rm -rf "$R"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both scripts are valid shell (parsed by `sh -n`), with paths quoted.
    #[test]
    fn scripts_parse() {
        for script in [apply_script("/var/lib/kiln/data/my cluster", "/x/rootfs"), restore_script("/d")] {
            let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(apply_script("/a b", "/r").contains("'/a b/.kiln/tune'"));
    }

    /// A real kernel has `net.bridge.*` only once br_netfilter is loaded (seen on an arm64 VM:
    /// `sysctl: cannot stat /proc/sys/net/bridge/bridge-nf-call-iptables`).
    #[test]
    fn modules_load_before_sysctls_apply() {
        let script = apply_script("/d", "/r");
        let modules = script.find("/etc/modules-load.d/*.conf").expect("modules");
        let sysctls = script.find("/etc/sysctl.d/*.conf").expect("sysctls");
        assert!(modules < sysctls, "{script}");
        // What was loaded before the first run is recorded before anything is loaded.
        assert!(script.find("/proc/modules").expect("record") < modules);
    }
}

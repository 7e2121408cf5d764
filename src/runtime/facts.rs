//! Facts about a host, gathered with one command: arch, OS, kernel, CPUs, memory, swap, disk
//! free under the data root, hostname, machine-id, clock, init system, cgroup version, listening
//! ports, missing commands, and the kernel features Kubernetes adapts to (IP_VS, whether
//! `nf_conntrack_max` can be set).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::image::Platform;
pub use crate::kubernetes::eviction::FsUsage;
use crate::ssh::{Session, SshError, quote};

/// Commands kiln itself needs on every host.
pub const REQUIRED_COMMANDS: &[&str] = &["sh", "tar", "gzip", "sha256sum", "mkdir", "mv", "rm", "cat", "systemctl"];

#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// `uname -m` mapped to OCI (`amd64`, `arm64`, …).
    pub arch: String,
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub swap_mib: u64,
    /// Free space where the data root is (or would be created).
    pub disk_free_mib: u64,
    pub hostname: String,
    pub machine_id: String,
    /// Host clock minus this machine's, in seconds (midpoint of the round trip).
    pub clock_offset_s: f64,
    pub init: String,
    pub cgroup: String,
    pub listening_ports: Vec<u16>,
    pub missing_commands: Vec<String>,
    /// The kernel has IPVS (loaded, built in, or a module it can load).
    pub ip_vs: bool,
    /// `nf_conntrack_max` is read-only here (a host in a network namespace other than the
    /// kernel's first, such as a container): kube-proxy must not try to raise it.
    pub conntrack_max_read_only: bool,
    /// Root cannot lower a process's `oom_score_adj` (no CAP_SYS_RESOURCE, as in some
    /// containers and restricted VMs): containerd must not ask for less than its own.
    pub oom_score_adj_restricted: bool,
    /// The filesystems the kubelet's directory and containerd's would be on (the nearest
    /// existing parent), for the kubelet's disk eviction thresholds.
    pub kubelet_fs: Option<FsUsage>,
    pub containerd_fs: Option<FsUsage>,
}

impl Facts {
    pub fn platform(&self) -> Platform {
        Platform::linux(&self.arch)
    }

    /// What Kubernetes must adapt to in this host's kernel.
    pub fn kernel_features(&self) -> crate::kubernetes::node_kernel::KernelFeatures {
        crate::kubernetes::node_kernel::KernelFeatures {
            cgroup_v1: self.cgroup == "v1",
            ip_vs: self.ip_vs,
            conntrack_max_read_only: self.conntrack_max_read_only,
            oom_score_adj_restricted: self.oom_score_adj_restricted,
            nftables: self.kernel_version().is_some_and(|v| v >= (5, 13)),
        }
    }

    /// Kernel `major.minor`, if it parses.
    pub fn kernel_version(&self) -> Option<(u32, u32)> {
        let mut parts = self.kernel.split(['.', '-']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }
}

/// OCI's name for a `uname -m`.
pub fn oci_arch(machine: &str) -> String {
    match machine {
        "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" | "armv8l" => "arm64",
        "armv7l" | "armv6l" => "arm",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
    .to_owned()
}

/// `df -Pk`'s size and available columns (KiB).
fn fs_usage(text: &str) -> Option<FsUsage> {
    let mut columns = text.split_whitespace().map(|c| c.parse::<u64>().ok());
    let (Some(Some(size)), Some(Some(available))) = (columns.next(), columns.next()) else { return None };
    Some(FsUsage { size_bytes: size * 1024, available_bytes: available * 1024 })
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The host's clock minus this machine's, in seconds, measured alone (after a repair);
/// `None` when the host's `date` printed no time.
pub async fn clock_offset(session: &Session) -> Result<Option<f64>, SshError> {
    let before = now();
    let out = session.run("date +%s.%N").await?;
    let after = now();
    Ok(out.stdout_text().trim().parse::<f64>().ok().map(|remote| remote - (before + (after - before) / 2.0)))
}

/// Prints `listen=<port in hex>` for each listening TCP socket, from /proc/net/tcp{,6} rather
/// than `ss`: its socket queries make a kernel load inet_diag and tcp_diag, which would be left
/// loaded after `kiln delete`.
const LISTENING_PORTS: &str =
    r#"awk 'FNR>1 && $4=="0A" {n=split($2,a,":"); print "listen=" a[n]}' /proc/net/tcp /proc/net/tcp6 2>/dev/null"#;

fn listening_port(hex: &str) -> Option<u16> {
    u16::from_str_radix(hex.trim(), 16).ok()
}

/// `extra_commands`: what this image needs beyond [`REQUIRED_COMMANDS`] (e.g. `zstd`).
pub async fn gather(session: &Session, data_root: &Path, extra_commands: &[String]) -> Result<Facts, SshError> {
    let commands = REQUIRED_COMMANDS
        .iter()
        .map(|c| quote(c))
        .chain(extra_commands.iter().map(|c| quote(c)))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        r#"echo "clock=$(date +%s.%N)"
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os=$ID"; echo "os_version=$VERSION_ID"; fi
echo "cpus=$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo)"
echo "mem_kib=$(awk '/^MemTotal:/{{print $2}}' /proc/meminfo)"
echo "swap_kib=$(awk '/^SwapTotal:/{{print $2}}' /proc/meminfo)"
d={data_root}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done
echo "disk_free_kib=$(df -Pk "$d" | awk 'NR==2{{print $4}}')"
echo "hostname=$(hostname)"
echo "machine_id=$(cat /etc/machine-id 2>/dev/null)"
echo "init=$(cat /proc/1/comm 2>/dev/null)"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo cgroup=v2; else echo cgroup=v1; fi
m=/lib/modules/$(uname -r)
if [ -e /proc/net/ip_vs ] || grep -qs '/ip_vs\.ko' "$m/modules.builtin" "$m/modules.dep"; then echo ip_vs=yes; fi
f=/proc/sys/net/netfilter/nf_conntrack_max
if [ -e $f ] && [ "$(stat -c %a $f)" = 444 ]; then echo conntrack_max=read-only; fi
sh -c 'echo -1 > /proc/self/oom_score_adj' 2>/dev/null || echo oom_score_adj=restricted
for f in kubelet containerd; do d=/var/lib/$f; while [ ! -d "$d" ]; do d=$(dirname "$d"); done
  echo "${{f}}_fs=$(df -Pk "$d" | awk 'NR==2{{print $2 " " $4}}')"; done
for c in {commands}; do command -v "$c" >/dev/null 2>&1 || echo "missing=$c"; done
{LISTENING_PORTS}
"#,
        data_root = quote(&data_root.display().to_string()),
    );
    let before = now();
    let out = session.run(&script).await?;
    let after = now();
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut ports = Vec::new();
    for line in out.stdout_text().lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        match k {
            "missing" => missing.push(v.to_owned()),
            "listen" => ports.extend(listening_port(v)),
            _ => {
                fields.insert(k.to_owned(), v.trim().to_owned());
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let number = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // The command ran between `before` and `after`; the clock line is printed first.
    let remote_clock: f64 = fields.get("clock").and_then(|c| c.parse().ok()).unwrap_or(0.0);
    let clock_offset_s = remote_clock - (before + (after - before) / 2.0);
    Ok(Facts {
        arch: oci_arch(&text("arch")),
        os: text("os"),
        os_version: text("os_version"),
        kernel: text("kernel"),
        cpus: number("cpus") as u32,
        memory_mib: number("mem_kib") / 1024,
        swap_mib: number("swap_kib") / 1024,
        disk_free_mib: number("disk_free_kib") / 1024,
        hostname: text("hostname"),
        machine_id: text("machine_id"),
        clock_offset_s,
        init: text("init"),
        cgroup: text("cgroup"),
        listening_ports: ports,
        missing_commands: missing,
        ip_vs: text("ip_vs") == "yes",
        conntrack_max_read_only: text("conntrack_max") == "read-only",
        kubelet_fs: fs_usage(&text("kubelet_fs")),
        containerd_fs: fs_usage(&text("containerd_fs")),
        oom_score_adj_restricted: text("oom_score_adj") == "restricted",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_read_from_proc_net_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let out = std::process::Command::new("sh").args(["-c", LISTENING_PORTS]).output().unwrap();
        let ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("listen="))
            .filter_map(listening_port)
            .collect();
        assert!(ports.contains(&port), "{port} not in {ports:?}");
        assert_eq!(listening_port("1F90"), Some(8080));
        assert_eq!(listening_port("nope"), None);
    }
}

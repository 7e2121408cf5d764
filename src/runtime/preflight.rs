//! Preflight: every check on every host, before anything changes anywhere. Checks are pure
//! functions of the gathered facts (so they are unit-tested without hosts); one table shows
//! every result.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use super::facts::Facts;
use crate::clusterfile::{Cluster, Host, Role};
use crate::image::Platform;
use crate::kubernetes::eviction::DiskEviction;
use crate::kubernetes::node_kernel::NodeAdaptations;

/// Check names, for `--skip-checks` and the table.
pub const CHECKS: &[&str] = &[
    "ssh",
    "hostname-unique",
    "machine-id-unique",
    "clock-skew",
    "arch",
    "cpu",
    "memory",
    "disk",
    "ports",
    "swap",
    "kernel",
    "commands",
    "reach",
    "kube-kernel",
    "kubelet-disk",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skipped,
    /// Fails now, and a plugin that repairs it runs in `pre-init-host`; kiln checks again then.
    Repair,
    /// Passes, with kiln configuring something differently for it (the detail says what).
    Adapt,
}

impl Outcome {
    /// As the tables show it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "ok",
            Self::Fail => "FAIL",
            Self::Skipped => "skipped",
            Self::Repair => "repair",
            Self::Adapt => "adapt",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub host: IpAddr,
    pub check: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

/// Requirements for one role.
#[derive(Debug, Clone, Copy)]
pub struct Minimums {
    pub cpus: u32,
    pub memory_mib: u64,
}

#[derive(Debug, Clone)]
pub struct PreflightOptions {
    pub skip: BTreeSet<String>,
    pub max_clock_skew_s: f64,
    /// Platforms the cluster image has (`None`: image not known here, `arch` is skipped).
    pub image_platforms: Option<Vec<Platform>>,
    /// Bytes the rootfs needs on every host and the registry content on registry hosts.
    pub rootfs_bytes: u64,
    pub registry_bytes: u64,
    pub master: Minimums,
    pub node: Minimums,
    /// Ports that must be free: on every host, and on registry hosts only.
    pub ports_everywhere: Vec<u16>,
    pub ports_on_registry_hosts: Vec<u16>,
    /// Ports that must be free on masters only (the `kubernetes` runtime's control plane).
    pub ports_on_masters: Vec<u16>,
    /// Ports a host may already use because an earlier run of this cluster started the service
    /// on them (a re-run or an image update must not fail on its own registry).
    pub ports_held_by_cluster: BTreeMap<IpAddr, BTreeSet<u16>>,
    pub min_kernel: (u32, u32),
    /// Commands the image needs on hosts beyond kiln's own (`zstd` for zstd layers).
    pub extra_commands: Vec<String>,
    /// Hostnames a plugin sets in `pre-init-host` (checked instead of the current ones).
    pub planned_hostnames: BTreeMap<IpAddr, PlannedHostname>,
    /// Hosts where a plugin repairs a failing clock-skew check: the plugin's name.
    pub clock_repairs: BTreeMap<IpAddr, String>,
    /// The image runs Kubernetes: its kernel adaptations are shown (`kube-kernel`) and its
    /// disks checked against the kubelet's eviction thresholds (`kubelet-disk`).
    pub kubernetes: bool,
    pub kubelet_eviction: DiskEviction,
}

/// The hostname a plugin gives a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedHostname {
    pub name: String,
    pub plugin: String,
}

impl Default for PreflightOptions {
    fn default() -> Self {
        Self {
            skip: BTreeSet::new(),
            max_clock_skew_s: 5.0,
            image_platforms: None,
            rootfs_bytes: 0,
            registry_bytes: 0,
            master: Minimums { cpus: 1, memory_mib: 900 },
            node: Minimums { cpus: 1, memory_mib: 450 },
            ports_everywhere: vec![],
            ports_on_registry_hosts: vec![],
            ports_on_masters: vec![],
            ports_held_by_cluster: BTreeMap::new(),
            min_kernel: (3, 10),
            extra_commands: vec![],
            planned_hostnames: BTreeMap::new(),
            clock_repairs: BTreeMap::new(),
            kubernetes: false,
            kubelet_eviction: DiskEviction::default(),
        }
    }
}

impl PreflightOptions {
    /// Adds what `cluster` and its image (when known here) require of hosts: the image's
    /// platforms, a first guess of the disk its rootfs needs (the compressed layers twice;
    /// [`PreflightOptions::with_disk_need`] replaces it with the measured sizes), the registry
    /// port on registry hosts, and `zstd` for zstd layers (hosts extract with their own tar).
    pub fn for_cluster(mut self, cluster: &Cluster, image: Option<&crate::image::Image>) -> Self {
        if let crate::clusterfile::Registry::Local(r) = &cluster.registry {
            self.ports_on_registry_hosts.push(r.port);
        }
        if let Some(image) = image {
            if super::run::ClusterRuntime::of(image) == Ok(super::run::ClusterRuntime::Kubernetes) {
                self.ports_everywhere.extend(KUBELET_PORTS);
                self.ports_on_masters.extend(CONTROL_PLANE_PORTS);
                self.kubernetes = true;
            }
            self.image_platforms = Some(image.platforms.iter().map(|p| p.platform.clone()).collect());
            self.rootfs_bytes = image.platforms.iter().map(|p| p.layers_size()).max().unwrap_or(0) * 2;
            let zstd = image.platforms.iter().flat_map(|p| p.manifest.layers()).any(|l| {
                crate::image::media::Compression::of_media_type(l.media_type().as_ref())
                    == Some(crate::image::media::Compression::Zstd)
            });
            if zstd {
                self.extra_commands.push("zstd".into());
            }
        }
        self
    }
}

impl PreflightOptions {
    /// The kubelet's disk thresholds as the Clusterfile's KubeletConfiguration sets them.
    pub fn with_kubelet_config(mut self, documents: &[crate::clusterfile::RawDocument]) -> Self {
        self.kubelet_eviction = DiskEviction::from_documents(documents);
        self
    }

    /// The disk each host needs, as the image's layers measured (unpacked size, plus the blobs
    /// hosts keep; registry content on registry hosts only).
    pub fn with_disk_need(mut self, need: super::distribute::DiskNeed) -> Self {
        self.rootfs_bytes = need.rootfs;
        self.registry_bytes = need.registry;
        self
    }

    /// Adds what the cluster's plugins promise to do in `pre-init-host` on each host in their
    /// scope: set its hostname from its env (the env its scripts get, `image_env` under the
    /// Clusterfile's), repair its clock.
    pub fn with_plugins(
        mut self,
        plugins: &crate::plugins::PluginSet,
        cluster: &Cluster,
        image_env: &BTreeMap<String, String>,
    ) -> Self {
        use crate::plugins::{Phase, Repairable};
        let Some(master0) = cluster.hosts.iter().find(|h| h.is_master()) else { return self };
        let rootfs = super::distribute::rootfs_dir(&super::distribute::cluster_dir(&cluster.data_root, &cluster.name));
        let env_of = |host: &Host| super::run::script_env(cluster, host, master0, &rootfs, image_env);
        for plugin in plugins.hooks(Phase::PreInitHost) {
            for host in cluster.hosts.iter().filter(|h| plugin.applies_to(h)) {
                if let Some(var) = &plugin.promises.hostname_from_env
                    && let Some(name) = env_of(host).get(var).filter(|n| !n.is_empty())
                {
                    // The last plugin of a phase runs last: its name stays.
                    self.planned_hostnames
                        .insert(host.ip, PlannedHostname { name: name.clone(), plugin: plugin.name.clone() });
                }
                if plugin.promises.repairs.contains(&Repairable::ClockSkew) {
                    self.clock_repairs.entry(host.ip).or_insert_with(|| plugin.name.clone());
                }
            }
        }
        self
    }
}

/// Why `name` cannot be a hostname and a Kubernetes node name (RFC 1123: lower-case labels of
/// letters, digits and `-`, each at most 63 characters, 253 in all).
pub fn hostname_problem(name: &str) -> Option<String> {
    let valid = crate::kubernetes::pki::is_dns_name(name) && !name.contains('*') && name == name.to_ascii_lowercase();
    (!valid).then(|| {
        format!("`{name}` is not a valid hostname (lower-case letters, digits and `-` between dots, at most 63 each)")
    })
}

/// Ports kubeadm's preflight wants free on every node (the kubelet's) and on control-plane
/// nodes (apiserver, etcd, controller manager, scheduler).
pub const KUBELET_PORTS: [u16; 1] = [10250];
pub const CONTROL_PLANE_PORTS: [u16; 5] = [6443, 2379, 2380, 10257, 10259];

/// What was learnt about one host: its facts, or why there are none, and which peers it
/// could not reach.
#[derive(Debug, Clone)]
pub struct Observed {
    pub facts: Result<Facts, String>,
    pub unreachable_peers: Vec<String>,
}

/// Evaluates every check for every host. `registry_hosts` run the in-cluster registry.
pub fn evaluate(
    cluster: &Cluster,
    observed: &BTreeMap<IpAddr, Observed>,
    registry_hosts: &BTreeSet<IpAddr>,
    options: &PreflightOptions,
) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let mut hostnames: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut machine_ids: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    // A hostname a plugin will set counts instead of the current one.
    let name_of = |ip: &IpAddr, facts: &Facts| {
        options.planned_hostnames.get(ip).map_or_else(|| facts.hostname.clone(), |p| p.name.clone())
    };
    for (ip, o) in observed {
        if let Ok(f) = &o.facts {
            hostnames.entry(name_of(ip, f)).or_default().push(*ip);
            machine_ids.entry(f.machine_id.clone()).or_default().push(*ip);
        }
    }
    let adaptations = NodeAdaptations::for_kernels(
        observed.values().filter_map(|o| o.facts.as_ref().ok()).map(Facts::kernel_features),
    );
    for host in &cluster.hosts {
        let mut push = |check: &'static str, outcome: Outcome, detail: String| {
            let outcome = if options.skip.contains(check) { Outcome::Skipped } else { outcome };
            results.push(CheckResult { host: host.ip, check, outcome, detail });
        };
        let Some(o) = observed.get(&host.ip) else { continue };
        let facts = match &o.facts {
            Ok(f) => f,
            Err(reason) => {
                push("ssh", Outcome::Fail, reason.clone());
                continue;
            }
        };
        let pass_fail = |ok: bool| if ok { Outcome::Pass } else { Outcome::Fail };
        push(
            "ssh",
            Outcome::Pass,
            format!("{} {} {}, kernel {}", facts.os, facts.os_version, facts.arch, facts.kernel),
        );

        let hostname = name_of(&host.ip, facts);
        let same_name = &hostnames[&hostname];
        let planned = options.planned_hostnames.get(&host.ip);
        let invalid = planned.and_then(|p| hostname_problem(&p.name));
        push(
            "hostname-unique",
            pass_fail(same_name.len() == 1 && !hostname.is_empty() && invalid.is_none()),
            match (invalid, planned) {
                (Some(problem), Some(p)) => format!("{problem} (`{}` of plugin {})", p.name, p.plugin),
                _ if same_name.len() > 1 => {
                    format!("`{hostname}` is also the hostname of {}", others(same_name, host.ip))
                }
                (_, Some(p)) if p.name != facts.hostname => {
                    format!("{} → {} (plugin {})", facts.hostname, p.name, p.plugin)
                }
                _ => hostname,
            },
        );
        let same_id = &machine_ids[&facts.machine_id];
        push(
            "machine-id-unique",
            pass_fail(same_id.len() == 1 && !facts.machine_id.is_empty()),
            if same_id.len() == 1 {
                String::new()
            } else {
                format!("machine-id also on {} (cloned image? regenerate /etc/machine-id)", others(same_id, host.ip))
            },
        );
        let skew = facts.clock_offset_s;
        let skewed = skew.abs() > options.max_clock_skew_s;
        let repair = options.clock_repairs.get(&host.ip).filter(|_| skewed);
        push(
            "clock-skew",
            match repair {
                Some(_) => Outcome::Repair,
                None => pass_fail(!skewed),
            },
            match repair {
                Some(plugin) => format!(
                    "{skew:+.1} s from this machine (limit ±{} s): plugin {plugin} syncs it in pre-init-host",
                    options.max_clock_skew_s
                ),
                None => format!("{skew:+.1} s from this machine (limit ±{} s)", options.max_clock_skew_s),
            },
        );
        match &options.image_platforms {
            None => push("arch", Outcome::Skipped, format!("{} (image not in the local store)", facts.arch)),
            Some(platforms) => {
                let has = platforms.iter().any(|p| p.matches(&facts.platform()));
                let list: Vec<String> = platforms.iter().map(ToString::to_string).collect();
                push(
                    "arch",
                    pass_fail(has),
                    if has {
                        facts.platform().to_string()
                    } else {
                        format!("the image has no {} variant (it has {})", facts.platform(), list.join(", "))
                    },
                );
            }
        }
        let min = if host.is_master() { options.master } else { options.node };
        let role = if host.is_master() { "master" } else { "node" };
        push("cpu", pass_fail(facts.cpus >= min.cpus), format!("{} CPUs (a {role} needs {})", facts.cpus, min.cpus));
        push(
            "memory",
            pass_fail(facts.memory_mib >= min.memory_mib),
            format!("{} MiB (a {role} needs {} MiB)", facts.memory_mib, min.memory_mib),
        );
        let registry_host = registry_hosts.contains(&host.ip);
        let need = options.rootfs_bytes + if registry_host { options.registry_bytes } else { 0 };
        let need_mib = need.div_ceil(1 << 20);
        push(
            "disk",
            pass_fail(facts.disk_free_mib >= need_mib),
            format!("{} MiB free under {} ({need_mib} MiB needed)", facts.disk_free_mib, cluster.data_root.display()),
        );
        let mut wanted: Vec<u16> = options.ports_everywhere.clone();
        if registry_host {
            wanted.extend(&options.ports_on_registry_hosts);
        }
        if host.is_master() {
            wanted.extend(&options.ports_on_masters);
        }
        let ours = options.ports_held_by_cluster.get(&host.ip);
        let busy: Vec<String> = wanted
            .iter()
            .filter(|p| facts.listening_ports.contains(p) && !ours.is_some_and(|o| o.contains(p)))
            .map(ToString::to_string)
            .collect();
        push(
            "ports",
            pass_fail(busy.is_empty()),
            if busy.is_empty() {
                format!("{} free", join_ports(&wanted))
            } else {
                format!("in use: {}", busy.join(", "))
            },
        );
        push(
            "swap",
            Outcome::Pass,
            if facts.swap_mib == 0 { "off".into() } else { format!("{} MiB: will be turned off", facts.swap_mib) },
        );
        let kernel_ok = facts.kernel_version().is_some_and(|v| v >= options.min_kernel);
        push(
            "kernel",
            pass_fail(kernel_ok),
            format!("{} (at least {}.{})", facts.kernel, options.min_kernel.0, options.min_kernel.1),
        );
        push(
            "commands",
            pass_fail(facts.missing_commands.is_empty()),
            if facts.missing_commands.is_empty() {
                "all present".into()
            } else {
                format!("missing: {}", facts.missing_commands.join(", "))
            },
        );
        push(
            "reach",
            pass_fail(o.unreachable_peers.is_empty()),
            if o.unreachable_peers.is_empty() {
                "reaches every other host".into()
            } else {
                format!("cannot reach {}", o.unreachable_peers.join(", "))
            },
        );
        if options.kubernetes {
            let adapted = adaptations.for_host(&facts.kernel_features(), !host.is_master());
            if adapted.is_empty() {
                push(
                    "kube-kernel",
                    Outcome::Pass,
                    format!("cgroup {}, IP_VS: kube-proxy {}", facts.cgroup, adaptations.proxy_mode),
                );
            } else {
                push("kube-kernel", Outcome::Adapt, adapted.join("; "));
            }
        }
        if options.kubernetes {
            let eviction = &options.kubelet_eviction;
            match (facts.kubelet_fs, facts.containerd_fs) {
                (Some(nodefs), Some(imagefs)) => match eviction.shortfall(nodefs, imagefs) {
                    None => push("kubelet-disk", Outcome::Pass, eviction.describe()),
                    Some(why) => push(
                        "kubelet-disk",
                        Outcome::Fail,
                        format!(
                            "{why}: the kubelet would evict every pod; free space, or set evictionHard \
                             in a KubeletConfiguration of the Clusterfile"
                        ),
                    ),
                },
                _ => push("kubelet-disk", Outcome::Fail, "df printed no size for /var/lib/kubelet's filesystem".into()),
            }
        }
    }
    results
}

fn others(ips: &[IpAddr], me: IpAddr) -> String {
    ips.iter().filter(|i| **i != me).map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn join_ports(ports: &[u16]) -> String {
    if ports.is_empty() {
        return "no ports required".into();
    }
    ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Which hosts run the in-cluster registry: every master with `ha`, else master0.
pub fn registry_hosts(cluster: &Cluster) -> BTreeSet<IpAddr> {
    let masters: Vec<&Host> = cluster.hosts.iter().filter(|h| h.roles.contains(&Role::Master)).collect();
    match &cluster.registry {
        crate::clusterfile::Registry::Local(r) if r.ha => masters.iter().map(|h| h.ip).collect(),
        crate::clusterfile::Registry::Local(_) => masters.first().map(|h| h.ip).into_iter().collect(),
        crate::clusterfile::Registry::External { .. } => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusterfile::Clusterfile;
    use crate::kubernetes::eviction::FsUsage;

    fn facts(hostname: &str, arch: &str) -> Facts {
        Facts {
            arch: arch.into(),
            os: "debian".into(),
            os_version: "12".into(),
            kernel: "6.1.0-13-amd64".into(),
            cpus: 2,
            memory_mib: 2048,
            swap_mib: 0,
            disk_free_mib: 10_000,
            hostname: hostname.into(),
            machine_id: format!("id-{hostname}"),
            clock_offset_s: 0.2,
            init: "systemd".into(),
            cgroup: "v2".into(),
            listening_ports: vec![22],
            missing_commands: vec![],
            ip_vs: true,
            conntrack_max_read_only: false,
            oom_score_adj_restricted: false,
            kubelet_fs: Some(FsUsage { size_bytes: 100 << 30, available_bytes: 50 << 30 }),
            containerd_fs: Some(FsUsage { size_bytes: 100 << 30, available_bytes: 50 << 30 }),
        }
    }

    fn cluster() -> Cluster {
        Clusterfile::parse(
            "C",
            "kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n  - ips: [10.0.0.2, 10.0.0.3]\n    roles: [node]\n",
        )
        .unwrap()
        .cluster
    }

    fn failures(results: &[CheckResult]) -> Vec<(String, &'static str)> {
        results.iter().filter(|r| r.outcome == Outcome::Fail).map(|r| (r.host.to_string(), r.check)).collect()
    }

    #[test]
    fn healthy_hosts_pass_everything() {
        let c = cluster();
        let observed: BTreeMap<IpAddr, Observed> = c
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.ip, Observed { facts: Ok(facts(&format!("h{i}"), "amd64")), unreachable_peers: vec![] }))
            .collect();
        let options = PreflightOptions { image_platforms: Some(vec![Platform::linux("amd64")]), ..Default::default() };
        let results = evaluate(&c, &observed, &registry_hosts(&c), &options);
        // Every check but `kube-kernel` and `kubelet-disk` (the image runs no Kubernetes).
        assert_eq!(results.len(), 3 * (CHECKS.len() - 2));
        assert!(failures(&results).is_empty(), "{results:?}");
    }

    #[test]
    fn kubernetes_hosts_show_what_their_kernels_change() {
        let c = cluster();
        let container = |name: &str| Facts {
            cgroup: "v1".into(),
            ip_vs: false,
            conntrack_max_read_only: true,
            oom_score_adj_restricted: true,
            ..facts(name, "amd64")
        };
        let observed: BTreeMap<IpAddr, Observed> = c
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let f = if i == 2 { container("h2") } else { facts(&format!("h{i}"), "amd64") };
                (h.ip, Observed { facts: Ok(f), unreachable_peers: vec![] })
            })
            .collect();
        let options = PreflightOptions { kubernetes: true, ..Default::default() };
        let results = evaluate(&c, &observed, &registry_hosts(&c), &options);
        let row = |ip: &str| {
            results.iter().find(|r| r.check == "kube-kernel" && r.host.to_string() == ip).expect("kube-kernel row")
        };
        assert_eq!(row("10.0.0.3").outcome, Outcome::Adapt);
        assert!(row("10.0.0.3").detail.contains("haproxy"), "{}", row("10.0.0.3").detail);
        // One host without IPVS moves kube-proxy off IPVS everywhere: the others say so too.
        assert_eq!(row("10.0.0.1").outcome, Outcome::Pass);
        assert!(row("10.0.0.1").detail.contains("kube-proxy nftables"), "{}", row("10.0.0.1").detail);
        assert!(failures(&results).is_empty());
    }

    #[test]
    fn a_disk_under_the_kubelets_eviction_threshold_fails_before_anything_is_installed() {
        let c = cluster();
        let full = FsUsage { size_bytes: 250 << 30, available_bytes: 20 << 30 };
        let observed: BTreeMap<IpAddr, Observed> = c
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut f = facts(&format!("h{i}"), "amd64");
                if i > 0 {
                    (f.kubelet_fs, f.containerd_fs) = (Some(full), Some(full));
                }
                (h.ip, Observed { facts: Ok(f), unreachable_peers: vec![] })
            })
            .collect();
        let kubernetes = PreflightOptions { kubernetes: true, ..Default::default() };
        let results = evaluate(&c, &observed, &registry_hosts(&c), &kubernetes);
        // Both full hosts are named, not only the first.
        assert_eq!(
            failures(&results),
            vec![("10.0.0.2".to_string(), "kubelet-disk"), ("10.0.0.3".to_string(), "kubelet-disk")]
        );
        let row = results.iter().find(|r| r.check == "kubelet-disk" && r.host.to_string() == "10.0.0.2").unwrap();
        assert!(row.detail.contains("(8.0 %), under the kubelet's nodefs.available 10 %"), "{}", row.detail);
        assert!(row.detail.contains("evictionHard"), "{}", row.detail);
        // The same hosts pass with the operator's explicit, absolute thresholds.
        let documents = Clusterfile::parse(
            "C",
            "kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n---\nkind: KubeletConfiguration\nevictionHard:\n  nodefs.available: 2Gi\n  imagefs.available: 2Gi\n",
        )
        .unwrap()
        .documents;
        let explicit = kubernetes.with_kubelet_config(&documents);
        assert!(failures(&evaluate(&c, &observed, &registry_hosts(&c), &explicit)).is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = cluster();
        let mut a = facts("same", "amd64");
        a.listening_ports.push(5000);
        let mut b = facts("same", "arm64");
        b.machine_id = "id-other".into();
        b.clock_offset_s = -42.0;
        let observed = BTreeMap::from([
            (c.hosts[0].ip, Observed { facts: Ok(a), unreachable_peers: vec![] }),
            (c.hosts[1].ip, Observed { facts: Ok(b), unreachable_peers: vec!["10.0.0.3:22".into()] }),
            (c.hosts[2].ip, Observed { facts: Err("connection refused".into()), unreachable_peers: vec![] }),
        ]);
        let options = PreflightOptions {
            image_platforms: Some(vec![Platform::linux("amd64")]),
            ports_on_registry_hosts: vec![5000],
            ..Default::default()
        };
        let results = evaluate(&c, &observed, &registry_hosts(&c), &options);
        let mut got = failures(&results);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1".to_string(), "hostname-unique"),
                ("10.0.0.1".to_string(), "ports"),
                ("10.0.0.2".to_string(), "arch"),
                ("10.0.0.2".to_string(), "clock-skew"),
                ("10.0.0.2".to_string(), "hostname-unique"),
                ("10.0.0.2".to_string(), "reach"),
                ("10.0.0.3".to_string(), "ssh"),
            ]
        );
        let skipped = PreflightOptions { skip: BTreeSet::from(["clock-skew".to_string()]), ..options };
        let results = evaluate(&c, &observed, &registry_hosts(&c), &skipped);
        assert!(!failures(&results).iter().any(|(_, c)| *c == "clock-skew"));
    }

    #[test]
    fn plugins_promises_count_names_to_be_set_and_clocks_to_be_repaired() {
        let text = "kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n    env: [HostName=m-0]\n  - ips: [10.0.0.2]\n    roles: [node]\n    env: [HostName=n-0]\n  - ips: [10.0.0.3]\n    roles: [node]\n";
        let c = Clusterfile::parse("C", text).unwrap().cluster;
        let plugin = |name: &str, annotation: &str| {
            format!(
                "kind: Plugin\nmetadata:\n  name: {name}\n  annotations: {{{annotation}}}\nspec: {{type: SHELL, action: pre-init-host, scope: master|node, data: x}}\n"
            )
        };
        let source = crate::plugins::PluginSource {
            file: "p.yaml".into(),
            text: format!(
                "{}---\n{}",
                plugin("hostname", "kiln.io/hostname-from-env: HostName"),
                plugin("time-sync", "kiln.io/repairs: clock-skew")
            ),
            kind: crate::plugins::SourceKind::ImageFile,
        };
        let plugins = crate::plugins::PluginSet::load(&[source], None).unwrap();
        let options = PreflightOptions::default().with_plugins(&plugins, &c, &BTreeMap::new());
        assert_eq!(options.planned_hostnames[&c.hosts[0].ip].name, "m-0");
        assert!(!options.planned_hostnames.contains_key(&c.hosts[2].ip), "no HostName: keeps its name");
        assert_eq!(options.clock_repairs.len(), 3);

        // Cloned machines: one hostname everywhere, and one clock off. The first two get names;
        // the third keeps the shared one, now unique.
        let cloned = |i: usize| Facts { machine_id: format!("id-{i}"), ..facts("debian", "amd64") };
        let skewed = Facts { clock_offset_s: 90.0, ..cloned(2) };
        let observed = BTreeMap::from([
            (c.hosts[0].ip, Observed { facts: Ok(cloned(0)), unreachable_peers: vec![] }),
            (c.hosts[1].ip, Observed { facts: Ok(cloned(1)), unreachable_peers: vec![] }),
            (c.hosts[2].ip, Observed { facts: Ok(skewed), unreachable_peers: vec![] }),
        ]);
        let results = evaluate(&c, &observed, &registry_hosts(&c), &options);
        assert!(failures(&results).is_empty(), "{results:?}");
        let result = |ip: IpAddr, check: &str| results.iter().find(|r| r.host == ip && r.check == check).unwrap();
        assert_eq!(result(c.hosts[0].ip, "hostname-unique").detail, "debian → m-0 (plugin hostname)");
        let clock = result(c.hosts[2].ip, "clock-skew");
        assert_eq!(clock.outcome, Outcome::Repair);
        assert!(clock.detail.contains("plugin time-sync syncs it"), "{}", clock.detail);
        assert_eq!(result(c.hosts[0].ip, "clock-skew").outcome, Outcome::Pass);

        // Without the plugins the same hosts fail both checks.
        let plain = evaluate(&c, &observed, &registry_hosts(&c), &PreflightOptions::default());
        let mut got = failures(&plain);
        got.sort();
        assert_eq!(got.iter().filter(|(_, c)| *c == "hostname-unique").count(), 3);
        assert!(got.contains(&("10.0.0.3".into(), "clock-skew")));

        // A name two hosts would get, or one that is no hostname, fails.
        let mut same = options.clone();
        same.planned_hostnames.get_mut(&c.hosts[1].ip).unwrap().name = "m-0".into();
        assert_eq!(failures(&evaluate(&c, &observed, &registry_hosts(&c), &same)).len(), 2);
        let mut invalid = options;
        invalid.planned_hostnames.get_mut(&c.hosts[1].ip).unwrap().name = "Node_0".into();
        let results = evaluate(&c, &observed, &registry_hosts(&c), &invalid);
        assert_eq!(failures(&results), vec![("10.0.0.2".to_string(), "hostname-unique")]);
        assert!(result_detail(&results, "10.0.0.2").contains("`Node_0` is not a valid hostname"));
    }

    fn result_detail(results: &[CheckResult], ip: &str) -> String {
        results.iter().find(|r| r.host.to_string() == ip && r.check == "hostname-unique").unwrap().detail.clone()
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        for good in ["m-0", "node1.dc.example", "a"] {
            assert_eq!(hostname_problem(good), None, "{good}");
        }
        for bad in ["", "Node", "a_b", "-a", "a-", "a..b", &"x".repeat(64)] {
            assert!(hostname_problem(bad).is_some(), "{bad}");
        }
    }
}

//! What the nodes' kernels make kiln configure differently. Decided once from every host's
//! facts in preflight and shown there, never applied silently: a customer's old-kernel hosts
//! need the same adaptations as the test hosts (containers on a cgroup v1 kernel without IPVS).

use std::fmt;

/// What one host's kernel offers, as preflight found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFeatures {
    pub cgroup_v1: bool,
    pub ip_vs: bool,
    /// `nf_conntrack_max` cannot be set (a network namespace other than the kernel's first).
    pub conntrack_max_read_only: bool,
    /// A negative `oom_score_adj` cannot be set: containerd keeps its containers' at or above
    /// its own (`restrict_oom_score_adj`).
    pub oom_score_adj_restricted: bool,
    /// Kernel 5.13 or later: what kube-proxy's nftables mode needs.
    pub nftables: bool,
}

impl Default for KernelFeatures {
    /// A current server kernel: cgroup v2, IPVS, nftables, conntrack settable.
    fn default() -> Self {
        Self {
            cgroup_v1: false,
            ip_vs: true,
            conntrack_max_read_only: false,
            oom_score_adj_restricted: false,
            nftables: true,
        }
    }
}

/// kube-proxy's mode: IPVS where every node has it (Sealer's choice), else nftables, else
/// iptables on kernels older than 5.13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Ipvs,
    Nftables,
    Iptables,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipvs => "ipvs",
            Self::Nftables => "nftables",
            Self::Iptables => "iptables",
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// containerd's settings for a host whose kernel needs them (a `conf.d` drop-in its config
/// imports), or `None`.
pub fn containerd_drop_in(kernel: &KernelFeatures) -> Option<&'static str> {
    kernel.oom_score_adj_restricted.then_some(
        "# kiln: this host cannot lower oom_score_adj (kiln's preflight, row kube-kernel)\n\
         [plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n",
    )
}

/// How a worker reaches the masters' apiservers through its local VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiserverBalancer {
    /// A kernel IPVS virtual server (Sealer's lvscare design).
    Ipvs,
    /// A local haproxy static pod bound to the VIP, checking each apiserver's health
    /// (KubeKey's and kubespray's design), where the kernel has no IPVS.
    Haproxy,
}

impl ApiserverBalancer {
    pub fn for_kernel(kernel: &KernelFeatures) -> Self {
        if kernel.ip_vs { Self::Ipvs } else { Self::Haproxy }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipvs => "IPVS",
            Self::Haproxy => "haproxy",
        }
    }
}

/// The cluster-wide settings the nodes' kernels call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAdaptations {
    /// Some node runs cgroup v1: the kubelet (1.35+) refuses it unless `failCgroupV1: false`,
    /// and kubeadm's SystemVerification preflight fails on it (kiln's own preflight stands in).
    pub cgroup_v1: bool,
    /// Some node cannot set `nf_conntrack_max`: kube-proxy leaves it (`conntrack.maxPerCore: 0`).
    pub conntrack_max_read_only: bool,
    /// The mode kiln gives kube-proxy unless a kubeadm document sets one.
    pub proxy_mode: ProxyMode,
    /// Every node has IPVS (an explicit `mode: ipvs` is refused otherwise).
    pub ip_vs_everywhere: bool,
}

impl Default for NodeAdaptations {
    fn default() -> Self {
        Self::for_kernels([KernelFeatures::default()])
    }
}

impl NodeAdaptations {
    pub fn for_kernels(kernels: impl IntoIterator<Item = KernelFeatures>) -> Self {
        let (mut cgroup_v1, mut conntrack, mut ip_vs, mut nftables) = (false, false, true, true);
        for k in kernels {
            cgroup_v1 |= k.cgroup_v1;
            conntrack |= k.conntrack_max_read_only;
            ip_vs &= k.ip_vs;
            nftables &= k.nftables;
        }
        let proxy_mode = match (ip_vs, nftables) {
            (true, _) => ProxyMode::Ipvs,
            (false, true) => ProxyMode::Nftables,
            (false, false) => ProxyMode::Iptables,
        };
        Self { cgroup_v1, conntrack_max_read_only: conntrack, proxy_mode, ip_vs_everywhere: ip_vs }
    }

    /// What kiln does differently because of one host's kernel, in the cluster these settings
    /// are for; empty when nothing.
    pub fn for_host(&self, kernel: &KernelFeatures, worker: bool) -> Vec<String> {
        let mut out = Vec::new();
        if kernel.cgroup_v1 {
            out.push("cgroup v1: kubelet with failCgroupV1: false, kubeadm's SystemVerification skipped".to_owned());
        }
        if !kernel.ip_vs {
            let balancer = if worker {
                format!(", apiserver VIP served by {}", ApiserverBalancer::for_kernel(kernel).as_str())
            } else {
                String::new()
            };
            out.push(format!("no IP_VS: kube-proxy mode {}{balancer}", self.proxy_mode));
        }
        if kernel.conntrack_max_read_only {
            out.push("nf_conntrack_max read-only: kube-proxy leaves it".to_owned());
        }
        if kernel.oom_score_adj_restricted {
            out.push("oom_score_adj cannot be lowered: containerd with restrict_oom_score_adj".to_owned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER: KernelFeatures = KernelFeatures {
        cgroup_v1: true,
        ip_vs: false,
        conntrack_max_read_only: true,
        oom_score_adj_restricted: true,
        nftables: true,
    };

    #[test]
    fn one_host_without_ipvs_moves_the_whole_cluster_off_ipvs() {
        let modern = KernelFeatures::default();
        assert_eq!(NodeAdaptations::for_kernels([modern, modern]).proxy_mode, ProxyMode::Ipvs);
        let mixed = NodeAdaptations::for_kernels([modern, CONTAINER]);
        assert_eq!(mixed.proxy_mode, ProxyMode::Nftables);
        assert!(mixed.cgroup_v1 && mixed.conntrack_max_read_only && !mixed.ip_vs_everywhere);
        let old = KernelFeatures { nftables: false, ..CONTAINER };
        assert_eq!(NodeAdaptations::for_kernels([modern, old]).proxy_mode, ProxyMode::Iptables);
    }

    #[test]
    fn each_host_is_told_what_changes_for_it() {
        let cluster = NodeAdaptations::for_kernels([CONTAINER]);
        let worker = cluster.for_host(&CONTAINER, true).join("; ");
        assert!(worker.contains("failCgroupV1: false") && worker.contains("haproxy"), "{worker}");
        assert!(worker.contains("kube-proxy mode nftables") && worker.contains("nf_conntrack_max"), "{worker}");
        assert!(worker.contains("restrict_oom_score_adj"), "{worker}");
        assert!(!cluster.for_host(&CONTAINER, false).join("; ").contains("haproxy"));
        assert!(cluster.for_host(&KernelFeatures::default(), true).is_empty());
        assert_eq!(ApiserverBalancer::for_kernel(&KernelFeatures::default()), ApiserverBalancer::Ipvs);
    }
}

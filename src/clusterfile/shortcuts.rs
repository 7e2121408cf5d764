//! The command-line form of a cluster: `kiln run IMAGE -m 10.0.0.1-10.0.0.3 -n IP,IP -u USER …`,
//! on its own or appended to a Clusterfile (Sealer's rules: a duplicate IP is an error, env is
//! appended, cmds and apps replace).

use std::net::IpAddr;

use super::{Cluster, Host, Role, SshConfig};

/// Parses `ip,ip,a.b.c.1-a.b.c.9` (IPv4 ranges by last octet or full address; IPv6 as single
/// addresses). Whitespace around entries is ignored.
pub fn parse_ip_list(list: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((from, to)) => {
                let from: std::net::Ipv4Addr =
                    from.trim().parse().map_err(|_| format!("`{from}` in range `{item}` is not an IPv4 address"))?;
                let to: std::net::Ipv4Addr = match to.trim().parse::<u8>() {
                    Ok(last) => {
                        let o = from.octets();
                        std::net::Ipv4Addr::new(o[0], o[1], o[2], last)
                    }
                    Err(_) => {
                        to.trim().parse().map_err(|_| format!("`{to}` in range `{item}` is not an IPv4 address"))?
                    }
                };
                let (a, b) = (u32::from(from), u32::from(to));
                if b < a {
                    return Err(format!("range `{item}` ends before it starts"));
                }
                if b - a > 4096 {
                    return Err(format!("range `{item}` has more than 4096 addresses"));
                }
                out.extend((a..=b).map(|n| IpAddr::V4(n.into())));
            }
            None => out.push(item.parse().map_err(|_| format!("`{item}` is not an IP address"))?),
        }
    }
    Ok(out)
}

/// Hosts given on the command line.
#[derive(Debug, Clone, Default)]
pub struct FlagHosts {
    pub masters: Vec<IpAddr>,
    pub nodes: Vec<IpAddr>,
    pub ssh: SshConfig,
}

impl FlagHosts {
    pub fn is_empty(&self) -> bool {
        self.masters.is_empty() && self.nodes.is_empty()
    }

    /// Appends these hosts to `cluster` (or makes them its hosts); an IP already there, or in
    /// both `-m` and `-n`, is an error.
    pub fn apply(&self, cluster: &mut Cluster) -> Result<(), String> {
        let new = self.masters.iter().map(|ip| (ip, Role::Master)).chain(self.nodes.iter().map(|ip| (ip, Role::Node)));
        for (ip, role) in new {
            if let Some(existing) = cluster.hosts.iter().find(|h| h.ip == *ip) {
                let roles: Vec<String> = existing.roles.iter().map(ToString::to_string).collect();
                return Err(format!("host {ip} is listed twice (already a {})", roles.join(",")));
            }
            cluster.hosts.push(Host {
                ip: *ip,
                roles: vec![role],
                ssh: self.ssh.clone(),
                env: Default::default(),
                labels: Default::default(),
                taints: vec![],
            });
        }
        if !cluster.hosts.iter().any(Host::is_master) {
            return Err("no master: give at least one with `-m IP`".into());
        }
        Ok(())
    }
}

impl FlagHosts {
    /// A Clusterfile made from flags alone (`kiln run IMAGE -m … -n …`).
    pub fn into_clusterfile(self, image: Option<String>) -> Result<super::Clusterfile, String> {
        let mut cluster = Cluster {
            name: "my-cluster".into(),
            image,
            env: Default::default(),
            cmds: vec![],
            app_names: None,
            hosts: vec![],
            container_runtime: None,
            host_aliases: vec![],
            registry: super::Registry::Local(Default::default()),
            data_root: super::DEFAULT_DATA_ROOT.into(),
        };
        self.apply(&mut cluster)?;
        Ok(super::Clusterfile { cluster, configs: vec![], applications: vec![], documents: vec![] })
    }
}

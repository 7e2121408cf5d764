//! The runner: connects to a cluster's hosts (bounded concurrency, one SSH session each),
//! gathers facts and runs preflight. Later phases (tuning, distribution, registry, bring-up)
//! build on [`Fleet`].

pub mod apiserver_balancer;
pub mod certs;
pub mod delete;
pub mod distribute;
pub mod etcd_member;
pub mod exec;
pub mod facts;
pub mod hooks;
pub mod journal;
pub mod kubernetes;
mod node_images;
pub mod preflight;
pub mod registry_access;
pub mod run;
pub mod scale;
pub mod state;
pub mod static_pod;
pub mod tune;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::clusterfile::{Cluster, Host};
use crate::ssh::{self, HostKeyPolicy, Session, SshError};
use facts::Facts;
use preflight::{CheckResult, Observed, PreflightOptions};

/// How kiln reaches hosts.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host_keys: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub command_timeout: Option<Duration>,
    /// Hosts connected to at once (`--max-hosts`, default 32).
    pub max_hosts: usize,
    pub bastion: Option<ssh::Target>,
}

impl ConnectOptions {
    fn ssh(&self) -> ssh::Options {
        ssh::Options {
            host_keys: self.host_keys.clone(),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
        }
    }
}

/// The SSH target for a Clusterfile host.
pub fn target_for(host: &Host, bastion: Option<&ssh::Target>) -> ssh::Target {
    ssh::Target {
        host: host.ip,
        port: host.ssh.port,
        user: host.ssh.user.clone(),
        auth: ssh::Auth {
            password: host.ssh.password.clone(),
            private_key: host.ssh.private_key.clone(),
            key_passphrase: host.ssh.key_passphrase.clone(),
            use_agent: true,
        },
        jump: bastion.map(|b| Box::new(b.clone())),
    }
}

/// Open sessions to the hosts that answered, and why the others did not.
pub struct Fleet {
    pub sessions: BTreeMap<IpAddr, Arc<Session>>,
    pub failed: BTreeMap<IpAddr, SshError>,
}

impl Fleet {
    pub async fn connect(hosts: &[Host], options: &ConnectOptions) -> Self {
        let ssh_options = options.ssh();
        let results: Vec<(IpAddr, Result<Session, SshError>)> = futures_util::stream::iter(hosts.iter())
            .map(|h| {
                let target = target_for(h, options.bastion.as_ref());
                let ssh_options = ssh_options.clone();
                async move { (h.ip, Session::connect(&target, &ssh_options).await) }
            })
            .buffer_unordered(options.max_hosts.max(1))
            .collect()
            .await;
        let mut fleet = Self { sessions: BTreeMap::new(), failed: BTreeMap::new() };
        for (ip, r) in results {
            match r {
                Ok(s) => {
                    fleet.sessions.insert(ip, Arc::new(s));
                }
                Err(e) => {
                    fleet.failed.insert(ip, e);
                }
            }
        }
        fleet
    }

    pub async fn close(self) {
        for (_, s) in self.sessions {
            if let Ok(s) = Arc::try_unwrap(s) {
                s.close().await;
            }
        }
    }
}

/// Everything `kiln check` learnt.
pub struct CheckReport {
    pub results: Vec<CheckResult>,
    pub facts: BTreeMap<IpAddr, Facts>,
}

impl CheckReport {
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.outcome == preflight::Outcome::Fail).count()
    }
}

/// Connects to every host, gathers facts, probes reachability between hosts, and evaluates
/// every preflight check. Changes nothing on any host.
pub async fn check(cluster: &Cluster, connect: &ConnectOptions, options: &PreflightOptions) -> (CheckReport, Fleet) {
    let fleet = Fleet::connect(&cluster.hosts, connect).await;
    let mut observed: BTreeMap<IpAddr, Observed> = BTreeMap::new();
    for (ip, e) in &fleet.failed {
        observed.insert(*ip, Observed { facts: Err(crate::error_chain(e)), unreachable_peers: vec![] });
    }
    let peers: Vec<(IpAddr, u16)> = cluster.hosts.iter().map(|h| (h.ip, h.ssh.port)).collect();
    let gathered: Vec<(IpAddr, Observed)> = futures_util::stream::iter(fleet.sessions.iter())
        .map(|(ip, session)| {
            let others: Vec<(IpAddr, u16)> = peers.iter().copied().filter(|(p, _)| p != ip).collect();
            let data_root = cluster.data_root.clone();
            async move {
                // Two channels at once: on slow (emulated) hosts every process costs.
                let (facts, unreachable) = tokio::join!(
                    facts::gather(session, &data_root, &options.extra_commands),
                    unreachable_peers(session, &others)
                );
                let facts = facts.map_err(|e| crate::error_chain(&e));
                let unreachable = if facts.is_ok() { unreachable } else { vec![] };
                (*ip, Observed { facts, unreachable_peers: unreachable })
            }
        })
        .buffer_unordered(connect.max_hosts.max(1))
        .collect()
        .await;
    observed.extend(gathered);
    let registry_hosts = preflight::registry_hosts(cluster);
    let results = preflight::evaluate(cluster, &observed, &registry_hosts, options);
    let facts = observed.into_iter().filter_map(|(ip, o)| o.facts.ok().map(|f| (ip, f))).collect();
    (CheckReport { results, facts }, fleet)
}

/// Peers (`ip:port`) this host cannot open a TCP connection to within 5 s, probed all at once
/// (a slow host, e.g. an emulated one under load, needs more than the connection's own time).
async fn unreachable_peers(session: &Session, peers: &[(IpAddr, u16)]) -> Vec<String> {
    if peers.is_empty() {
        return vec![];
    }
    let mut probes: Vec<String> = peers
        .iter()
        .map(|(ip, port)| {
            format!("(timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null || echo unreachable={ip}:{port}) &")
        })
        .collect();
    probes.push("wait".to_owned());
    match session.exec(&probes.join("\n")).await {
        Ok(out) => {
            out.stdout_text().lines().filter_map(|l| l.strip_prefix("unreachable=")).map(str::to_owned).collect()
        }
        Err(e) => vec![format!("(probe failed: {e})")],
    }
}

/// Default known_hosts: the user's, as OpenSSH uses.
pub fn default_known_hosts() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from).join(".ssh").join("known_hosts")
}

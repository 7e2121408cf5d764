//! `kiln scale-down`: hosts leave a running cluster. The cluster lets go of each one first
//! (kubernetes: drain, then `kubeadm reset`, which removes a master's etcd member — kiln then
//! makes sure through master0's etcd, which a forced removal needs — and `kubectl delete node`;
//! shell runtime: the image's `scripts/leave.sh`), then the host is cleaned as `kiln delete`
//! cleans it. Masters leave one at a time, nodes in parallel.
//!
//! Unlike Sealer, which refuses to remove master0, removing master0 hands its role to the
//! next master first: the state copy, where apps run and where workers find the registry. The
//! last master is never removed. A host that cannot be reached is refused, or with `--force`
//! taken out of the cluster from master0 and reported as not cleaned.
//!
//! Joining (`kiln scale-up`) is a run with [`Scope::Join`](super::run::Scope::Join).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use super::journal::{Journal, JournalError};
use super::kubernetes::ADMIN_CONF;
use super::run::{ClusterRuntime, RunReporter, script_env};
use super::{ConnectOptions, Fleet, delete, distribute, etcd_member, kubernetes};
use crate::clusterfile::{Clusterfile, Host, Registry};
use crate::plugins::Phase;
use crate::ssh::{Session, SshError, quote, with_env};

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("{0} is not a host of cluster `{1}`")]
    NotInCluster(IpAddr, String),
    #[error("{0} would leave no master: a cluster keeps at least one (`kiln delete` removes it all)")]
    LastMaster(String),
    #[error(
        "removing master0 ({0}) would take the cluster's only registry with it (`registry.localRegistry.ha: false`); \
         remove the other hosts first, or `kiln delete` the cluster"
    )]
    RegistryOnMaster0(IpAddr),
    #[error("cannot reach {}; nothing was changed (use --force to take them out without cleaning them)\n  {}", hosts.join(", "), reasons.join("\n  "))]
    Unreachable { hosts: Vec<String>, reasons: Vec<String> },
    #[error("cannot reach the new master0 {host}: {reason}")]
    Master0Unreachable { host: IpAddr, reason: String },
    #[error("{host} did not leave the cluster")]
    Leave {
        host: IpAddr,
        #[source]
        source: Box<SshError>,
    },
    #[error("{host} left the cluster but was not cleaned")]
    Clean {
        host: IpAddr,
        #[source]
        source: Box<delete::DeleteError>,
    },
    #[error(
        "{host} left the cluster, but its etcd member could not be checked or removed \
         (see `etcdctl member list` in master0's etcd pod)"
    )]
    EtcdMember {
        host: IpAddr,
        #[source]
        source: Box<etcd_member::EtcdMemberError>,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Hosts leaving a cluster.
pub struct LeaveRequest<'a> {
    /// The cluster as it runs now (the saved Clusterfile).
    pub clusterfile: &'a Clusterfile,
    pub leaving: BTreeSet<IpAddr>,
    pub connect: ConnectOptions,
    /// The cluster's state dir on this machine (journal).
    pub state_dir: PathBuf,
    /// Take unreachable hosts out of the cluster without cleaning them.
    pub force: bool,
    /// The cluster's plugins (`pre-clean-host` and `post-clean-host` run on leaving hosts).
    pub plugins: crate::plugins::PluginSet,
}

#[derive(Debug, Default, Serialize)]
pub struct LeaveOutcome {
    /// Hosts that left and were cleaned.
    pub removed: Vec<IpAddr>,
    /// Hosts taken out of the cluster but not cleaned (unreachable, `--force`): host → why.
    pub not_cleaned: BTreeMap<IpAddr, String>,
    /// master0 after the change, when it changed.
    pub new_master0: Option<IpAddr>,
    /// Remaining hosts that could not be updated (workers' apiserver VIP, registry address).
    pub not_updated: BTreeMap<IpAddr, String>,
}

/// The cluster without `leaving`, checked: every leaving host is in it, a master remains, and
/// master0's removal does not take the only registry.
pub fn remaining(clusterfile: &Clusterfile, leaving: &BTreeSet<IpAddr>) -> Result<Clusterfile, ScaleError> {
    let cluster = &clusterfile.cluster;
    if let Some(stranger) = leaving.iter().find(|ip| !cluster.hosts.iter().any(|h| h.ip == **ip)) {
        return Err(ScaleError::NotInCluster(*stranger, cluster.name.clone()));
    }
    let mut rest = clusterfile.clone();
    rest.cluster.hosts.retain(|h| !leaving.contains(&h.ip));
    if rest.master0().is_none() {
        let names: Vec<String> = leaving.iter().map(ToString::to_string).collect();
        return Err(ScaleError::LastMaster(format!("removing {}", names.join(", "))));
    }
    if let (Some(old), Registry::Local(registry)) = (clusterfile.master0(), &cluster.registry)
        && leaving.contains(&old.ip)
        && !registry.ha
    {
        return Err(ScaleError::RegistryOnMaster0(old.ip));
    }
    Ok(rest)
}

/// Which runtime brought the cluster up, from what its journal recorded.
pub fn runtime_of(journal: Option<&Journal>) -> ClusterRuntime {
    match journal {
        Some(j) if j.steps.contains_key("kube-init") => ClusterRuntime::Kubernetes,
        _ => ClusterRuntime::Shell,
    }
}

pub async fn leave(request: &LeaveRequest<'_>, reporter: &dyn RunReporter) -> Result<LeaveOutcome, ScaleError> {
    let before = request.clusterfile;
    let after = remaining(before, &request.leaving)?;
    let cluster = &before.cluster;
    let journal_path = request.state_dir.join("journal.json");
    let journal = Journal::load(&journal_path)?;
    let runtime = runtime_of(journal.as_ref());
    let (Some(old_master0), Some(new_master0)) = (before.master0().cloned(), after.master0().cloned()) else {
        return Err(ScaleError::LastMaster("this change".into()));
    };
    let leaving: Vec<Host> = cluster.hosts.iter().filter(|h| request.leaving.contains(&h.ip)).cloned().collect();

    reporter.phase("connect", "reach the leaving hosts and master0");
    let mut reach = leaving.clone();
    reach.push(new_master0.clone());
    let fleet = Fleet::connect(&reach, &request.connect).await;
    if let Some(e) = fleet.failed.get(&new_master0.ip) {
        let reason = crate::error_chain(e);
        fleet.close().await;
        return Err(ScaleError::Master0Unreachable { host: new_master0.ip, reason });
    }
    let unreachable: Vec<&Host> = leaving.iter().filter(|h| fleet.failed.contains_key(&h.ip)).collect();
    if !unreachable.is_empty() && !request.force {
        let hosts = unreachable.iter().map(|h| h.ip.to_string()).collect();
        let reasons =
            unreachable.iter().map(|h| format!("{}: {}", h.ip, crate::error_chain(&fleet.failed[&h.ip]))).collect();
        fleet.close().await;
        return Err(ScaleError::Unreachable { hosts, reasons });
    }
    let master0_session = Arc::clone(&fleet.sessions[&new_master0.ip]);
    let dir = distribute::cluster_dir(&cluster.data_root, &cluster.name);
    let rootfs = distribute::rootfs_dir(&dir);
    let node_names = match runtime {
        ClusterRuntime::Kubernetes => node_names_by_ip(&master0_session).await.unwrap_or_default(),
        ClusterRuntime::Shell => BTreeMap::new(),
    };
    let ctx = Leaving {
        request,
        after: &after,
        new_master0: &new_master0,
        master0_session,
        runtime,
        dir,
        rootfs,
        node_names,
    };

    reporter.phase("leave", "the cluster lets go of each host, which is then cleaned");
    let mut outcome = LeaveOutcome::default();
    let mut journal = journal.unwrap_or_default();
    // Masters one at a time (etcd's quorum changes one member at a time), then nodes.
    let (masters, nodes): (Vec<&Host>, Vec<&Host>) = leaving.iter().partition(|h| h.is_master());
    let mut result = Ok(());
    for master in masters {
        let session = fleet.sessions.get(&master.ip).cloned();
        let r = ctx.leave_one(master, session, reporter).await;
        if let Err(e) = ctx.settle(&mut journal, &journal_path, master, r, &mut outcome) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        let done: Vec<(&Host, Result<Option<String>, ScaleError>)> = futures_util::stream::iter(nodes)
            .map(|node| {
                let session = fleet.sessions.get(&node.ip).cloned();
                let ctx = &ctx;
                async move { (node, ctx.leave_one(node, session, reporter).await) }
            })
            .buffer_unordered(request.connect.max_hosts.max(1))
            .collect()
            .await;
        for (node, r) in done {
            if let Err(e) = ctx.settle(&mut journal, &journal_path, node, r, &mut outcome) {
                result = result.and(Err(e));
            }
        }
    }
    fleet.close().await;
    result?;

    // What the remaining hosts must learn: masters left (workers' VIP), master0 moved (where
    // workers find the registry; master0's copy of the state).
    let masters_left = leaving.iter().any(Host::is_master);
    let master0_moved = old_master0.ip != new_master0.ip;
    if master0_moved {
        outcome.new_master0 = Some(new_master0.ip);
    }
    if masters_left || master0_moved {
        ctx.update_remaining(masters_left, master0_moved, &mut outcome, reporter).await;
    }
    super::state::copy_journal_to_master0(&ctx.master0_session, &ctx.dir, &journal_path).await;
    let copied = super::state::copy_to_master0(&ctx.master0_session, &ctx.dir, &request.state_dir, &after).await;
    if let Err(e) = copied {
        outcome.not_updated.insert(new_master0.ip, format!("its copy of the cluster state: {e}"));
    }
    outcome.removed.sort();
    Ok(outcome)
}

/// What every leaving host needs.
struct Leaving<'a> {
    request: &'a LeaveRequest<'a>,
    after: &'a Clusterfile,
    new_master0: &'a Host,
    master0_session: Arc<Session>,
    runtime: ClusterRuntime,
    dir: String,
    rootfs: String,
    /// Kubernetes node names by InternalIP, from the API.
    node_names: BTreeMap<IpAddr, String>,
}

impl Leaving<'_> {
    /// Takes `host` out of the cluster and cleans it; `Some(why)` when it could only be taken
    /// out (unreachable, `--force`).
    async fn leave_one(
        &self,
        host: &Host,
        session: Option<Arc<Session>>,
        reporter: &dyn RunReporter,
    ) -> Result<Option<String>, ScaleError> {
        let who = host.ip.to_string();
        let fail = |source: SshError| ScaleError::Leave { host: host.ip, source: Box::new(source) };
        let node = self.node_names.get(&host.ip).cloned();
        let outputs = self.request.state_dir.join("plugins");
        let clean_hooks = session.as_deref().map(|session| delete::HostHooks {
            session,
            clusterfile: self.request.clusterfile,
            host,
            master0: self.new_master0,
            rootfs: &self.rootfs,
            plugins: &self.request.plugins,
            operation: super::hooks::Operation::ScaleDown,
            outputs: Some(&outputs),
        });
        let hook_failed = |e| ScaleError::Clean { host: host.ip, source: Box::new(e) };
        // Before the cluster lets go of the host: a hook may still need it (a backup of its etcd).
        if let Some(hooks) = &clean_hooks {
            hooks.run(Phase::PreCleanHost, reporter).await.map_err(hook_failed)?;
        }
        match self.runtime {
            ClusterRuntime::Kubernetes => {
                if let (Some(node), Some(_)) = (&node, &session) {
                    let drain = format!(
                        "kubectl --kubeconfig {ADMIN_CONF} drain {} --ignore-daemonsets --delete-emptydir-data --force --timeout=300s",
                        quote(node)
                    );
                    self.master0_session.run(&drain).await.map_err(fail)?;
                    reporter.step(&who, "drained");
                }
            }
            ClusterRuntime::Shell => {
                // The image's leave.sh: on the host itself, or on master0 for a host that is gone.
                let runner = session.as_ref().map_or(self.new_master0, |_| host);
                let on = session.as_ref().unwrap_or(&self.master0_session);
                let mut env = script_env(&self.after.cluster, runner, self.new_master0, &self.rootfs, &BTreeMap::new());
                env.insert("LeavingHostIP".into(), host.ip.to_string());
                let command = format!(
                    "cd {} && if [ -f scripts/leave.sh ]; then bash scripts/leave.sh; \
                     else echo 'the image has no scripts/leave.sh: nothing to undo in the cluster'; fi",
                    quote(&self.rootfs)
                );
                let out = on.run(&with_env(&env, &command)).await.map_err(fail)?;
                for line in out.stdout_text().lines() {
                    reporter.step(&who, line);
                }
            }
        }
        let unreachable = match &session {
            Some(session) => {
                // kubeadm reset (and a master's etcd member) first, then the image's clean scripts.
                delete::clean_host(
                    session,
                    self.request.clusterfile,
                    host,
                    self.new_master0,
                    &self.dir,
                    &self.rootfs,
                    self.after.cluster.cri(),
                    reporter,
                )
                .await
                .map_err(|source| hook_failed(delete::DeleteError::Clean { host: host.ip.to_string(), source }))?;
                if let Some(hooks) = &clean_hooks {
                    hooks.run(Phase::PostCleanHost, reporter).await.map_err(hook_failed)?;
                }
                None
            }
            None => Some("unreachable: taken out of the cluster, not cleaned".to_owned()),
        };
        if self.runtime == ClusterRuntime::Kubernetes && host.is_master() {
            self.remove_etcd_member(host, reporter).await?;
        }
        if let (ClusterRuntime::Kubernetes, Some(node)) = (self.runtime, &node) {
            let delete = format!("kubectl --kubeconfig {ADMIN_CONF} delete node {} --ignore-not-found", quote(node));
            self.master0_session.run(&delete).await.map_err(fail)?;
            reporter.step(&who, &format!("node {node} deleted"));
        }
        Ok(unreachable)
    }

    /// The leaving master's etcd member, when `kubeadm reset` did not remove it (the host is
    /// gone, or its etcd did not answer).
    async fn remove_etcd_member(&self, host: &Host, reporter: &dyn RunReporter) -> Result<(), ScaleError> {
        let who = host.ip.to_string();
        let Some(master0_node) = self.node_names.get(&self.new_master0.ip) else {
            return Err(ScaleError::EtcdMember {
                host: host.ip,
                source: Box::new(etcd_member::EtcdMemberError::NoNode(self.new_master0.ip)),
            });
        };
        match etcd_member::remove(&self.master0_session, master0_node, host.ip).await {
            Ok(etcd_member::Removal::Removed(id)) => reporter.step(&who, &format!("etcd member {id} removed")),
            Ok(etcd_member::Removal::AlreadyGone) => reporter.step(&who, "no longer an etcd member"),
            Err(e) => return Err(ScaleError::EtcdMember { host: host.ip, source: Box::new(e) }),
        }
        Ok(())
    }

    /// Journals a host's departure (its steps are forgotten) or returns its error.
    fn settle(
        &self,
        journal: &mut Journal,
        path: &std::path::Path,
        host: &Host,
        result: Result<Option<String>, ScaleError>,
        outcome: &mut LeaveOutcome,
    ) -> Result<(), ScaleError> {
        let not_cleaned = result?;
        journal.forget_host(&host.ip.to_string());
        journal.save(path)?;
        match not_cleaned {
            Some(why) => {
                outcome.not_cleaned.insert(host.ip, why);
            }
            None => outcome.removed.push(host.ip),
        }
        Ok(())
    }

    /// Workers' apiserver virtual server over the masters that remain, and the registry
    /// address on hosts that reach it through master0. Best effort: a host that cannot be
    /// reached is reported, and `kiln apply` updates it later.
    async fn update_remaining(
        &self,
        masters_left: bool,
        master0_moved: bool,
        outcome: &mut LeaveOutcome,
        reporter: &dyn RunReporter,
    ) {
        let cluster = &self.after.cluster;
        let registry_hosts = super::preflight::registry_hosts(cluster);
        let mut scripts: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        let masters: Vec<IpAddr> = cluster.hosts.iter().filter(|h| h.is_master()).map(|h| h.ip).collect();
        let vip = kubernetes::cluster_vip(cluster).unwrap_or(kubernetes::DEFAULT_VIP);
        // The workers, whose apiserver balancer goes over the masters that remain.
        let balancer = (masters_left && self.runtime == ClusterRuntime::Kubernetes)
            .then(|| super::apiserver_balancer::BalancerTarget { vip, masters: &masters, haproxy_image: None });
        let balanced: BTreeSet<IpAddr> = match balancer {
            Some(_) => cluster.hosts.iter().filter(|h| !h.is_master()).map(|h| h.ip).collect(),
            None => BTreeSet::new(),
        };
        if master0_moved && let Registry::Local(registry) = &cluster.registry {
            let entry = quote(&format!("{} {} # kiln-registry", self.new_master0.ip, registry.domain));
            for host in cluster.hosts.iter().filter(|h| !registry_hosts.contains(&h.ip)) {
                scripts.entry(host.ip).or_default().push(format!(
                    "if grep -q '# kiln-registry$' /etc/hosts; then sed -i '/# kiln-registry$/d' /etc/hosts && echo {entry} >> /etc/hosts; fi"
                ));
            }
        }
        let hosts: Vec<Host> =
            cluster.hosts.iter().filter(|h| balanced.contains(&h.ip) || scripts.contains_key(&h.ip)).cloned().collect();
        if hosts.is_empty() {
            return;
        }
        let fleet = Fleet::connect(&hosts, &self.request.connect).await;
        // Every host at once (bounded): a worker's balancer first, then each one's scripts in
        // order, stopping at the first that fails.
        let updates: Vec<(IpAddr, Result<(), String>)> = futures_util::stream::iter(&fleet.sessions)
            .map(|(ip, session)| {
                let scripts = scripts.get(ip).map(Vec::as_slice).unwrap_or_default();
                let balancer = balancer.as_ref().filter(|_| balanced.contains(ip));
                async move {
                    if let Some(target) = balancer
                        && let Err(e) = super::apiserver_balancer::refresh(session, *ip, target).await
                    {
                        return (*ip, Err(crate::error_chain(&e)));
                    }
                    let mut result = Ok(());
                    for script in scripts {
                        if let Err(e) = session.run(script).await {
                            result = Err(crate::error_chain(&e));
                            break;
                        }
                    }
                    (*ip, result)
                }
            })
            .buffer_unordered(self.request.connect.max_hosts.max(1))
            .collect()
            .await;
        for (ip, result) in updates {
            match result {
                Ok(()) => reporter.step(&ip.to_string(), "updated for the hosts that left"),
                Err(e) => {
                    outcome.not_updated.insert(ip, e);
                }
            }
        }
        for (ip, e) in &fleet.failed {
            outcome.not_updated.insert(*ip, crate::error_chain(e));
        }
        fleet.close().await;
    }
}

/// Node names by InternalIP, as the API lists them (a node's name need not be its hostname).
async fn node_names_by_ip(session: &Session) -> Result<BTreeMap<IpAddr, String>, SshError> {
    #[derive(serde::Deserialize)]
    struct List {
        items: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        metadata: Meta,
        #[serde(default)]
        status: Status,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        name: String,
    }
    #[derive(serde::Deserialize, Default)]
    struct Status {
        #[serde(default)]
        addresses: Vec<Address>,
    }
    #[derive(serde::Deserialize)]
    struct Address {
        #[serde(rename = "type")]
        kind: String,
        address: String,
    }
    let out = session.run(&format!("kubectl --kubeconfig {ADMIN_CONF} get nodes -o json")).await?;
    let list: List = serde_json::from_str(&out.stdout_text()).unwrap_or(List { items: vec![] });
    Ok(list
        .items
        .into_iter()
        .flat_map(|item| {
            let name = item.metadata.name;
            item.status
                .addresses
                .into_iter()
                .filter(|a| a.kind == "InternalIP")
                .filter_map(move |a| a.address.parse().ok().map(|ip| (ip, name.clone())))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusterfile(registry: &str) -> Clusterfile {
        Clusterfile::parse(
            "Clusterfile",
            &format!(
                "kind: Cluster\nmetadata: {{name: c}}\nspec:\n{registry}  hosts:\n  - ips: [10.0.0.1, 10.0.0.2]\n    roles: [master]\n  - ips: [10.0.0.3]\n    roles: [node]\n"
            ),
        )
        .expect("valid")
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn remaining_keeps_a_master_and_moves_master0() {
        let cf = clusterfile("");
        let rest = remaining(&cf, &ips(&["10.0.0.1"])).expect("master0 may leave");
        assert_eq!(rest.master0().map(|h| h.ip.to_string()).as_deref(), Some("10.0.0.2"));
        assert_eq!(rest.cluster.hosts.len(), 2);
        assert!(matches!(remaining(&cf, &ips(&["10.0.0.1", "10.0.0.2"])), Err(ScaleError::LastMaster(_))));
        assert!(matches!(remaining(&cf, &ips(&["10.0.0.9"])), Err(ScaleError::NotInCluster(..))));
        let single = clusterfile("  registry:\n    localRegistry:\n      ha: false\n");
        assert!(matches!(remaining(&single, &ips(&["10.0.0.1"])), Err(ScaleError::RegistryOnMaster0(_))));
        assert!(remaining(&single, &ips(&["10.0.0.2", "10.0.0.3"])).is_ok());
    }

    #[test]
    fn the_runtime_is_read_from_the_journal() {
        let mut j = Journal::default();
        assert_eq!(runtime_of(Some(&j)), ClusterRuntime::Shell);
        assert_eq!(runtime_of(None), ClusterRuntime::Shell);
        j.mark_done("kube-init", "10.0.0.1");
        assert_eq!(runtime_of(Some(&j)), ClusterRuntime::Kubernetes);
    }
}

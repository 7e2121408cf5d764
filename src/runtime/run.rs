//! `kiln run`: preflight, distribution, in-cluster registry, container runtime, bring-up (shell
//! runtime) and apps, as phases over the hosts. Every finished (phase, host) step is journaled,
//! so a failed run continues where it stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use super::distribute::{
    self, DistributeError, DistributeOutcome, DistributeReporter, Distributor, HostHoldings, LayerSpool, LayerTransfer,
    RootfsPlan,
};
use super::hooks;
use super::journal::{self, Journal, JournalError};
use super::preflight::{CheckResult, PreflightOptions};
use super::registry_access::{self, RegistryAccess};
use super::{CheckReport, ConnectOptions, Fleet};
use crate::clusterfile::{Clusterfile, Host, LocalRegistry, Registry, Role};
use crate::image::{Digest, Image, ImageExtension, Platform, PlatformImage, Store, media};
use crate::kubernetes::node_kernel::KernelFeatures;
use crate::plugins::Phase;
use crate::secret::Secret;
use crate::ssh::{Session, SshError, quote, with_env};

pub use crate::image::RUNTIME_LABEL;
/// Where containerd (1.5+) looks for per-registry `hosts.toml`.
pub const CONTAINERD_CERTS_DIR: &str = "/etc/containerd/certs.d";

/// Upstream registries whose pulls the in-cluster registry answers.
pub const MIRRORED_UPSTREAMS: &[&str] = &["docker.io", "registry.k8s.io", "k8s.gcr.io", "quay.io", "ghcr.io"];

pub const PHASES: &[(&str, &str)] = &[
    ("preflight", "check every host"),
    ("distribute", "copy each host its platform's rootfs"),
    ("os-tune", "apply the image's sysctl, modules and limits; swap, SELinux and firewall off"),
    ("registry", "start the in-cluster registry and point every host at it"),
    ("container-runtime", "install the container runtime"),
    ("bring-up", "bring the cluster up"),
    ("apps", "launch the apps on master0"),
];

pub trait RunReporter: DistributeReporter {
    fn phase(&self, id: &str, title: &str);
    fn step(&self, host: &str, message: &str);
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preflight failed: {failed} checks; nothing was changed on any host")]
    Preflight { failed: usize, results: Vec<CheckResult> },
    #[error("phase `{phase}` failed on {host}")]
    Step {
        phase: &'static str,
        host: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the cluster image has no {platform} variant for host {host}")]
    NoVariant { host: String, platform: Platform },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    RegistryAccess(#[from] super::registry_access::RegistryAccessError),
    #[error(
        "cluster runtime `{0}` is not supported (the image's label {RUNTIME_LABEL} must be `kubernetes` or `shell`)"
    )]
    Runtime(String),
}

/// Who brings the cluster up, from the image's runtime label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRuntime {
    /// kubeadm, driven by kiln (`runtime::kubernetes`).
    Kubernetes,
    /// The image's own `init-master0.sh`, `join-master.sh` and `join-node.sh`.
    Shell,
}

impl ClusterRuntime {
    /// The runtime `image` asks for (unlabelled images are `shell`), or the label it has.
    pub fn of(image: &Image) -> Result<Self, String> {
        match image.runtime_label() {
            Some("kubernetes") => Ok(Self::Kubernetes),
            Some("shell") | None => Ok(Self::Shell),
            Some(other) => Err(other.to_owned()),
        }
    }
}

/// Everything a run needs, resolved.
pub struct RunRequest<'a> {
    pub store: &'a Store,
    pub clusterfile: &'a Clusterfile,
    pub image: Image,
    pub connect: ConnectOptions,
    pub preflight: PreflightOptions,
    /// How layers travel to hosts.
    pub layer_transfer: LayerTransfer,
    /// Hosts keep the layers they get (`--no-layer-cache`: they do not).
    pub keep_layers: bool,
    /// Operator-side state: journal and effective Clusterfile.
    pub state_dir: PathBuf,
    /// How long the `kubernetes` runtime waits for every node to be Ready.
    pub ready_timeout: std::time::Duration,
    /// Validity of the certificates the `kubernetes` runtime makes.
    pub cert_validity: crate::kubernetes::pki::Validity,
    /// Connect, check and plan; change nothing.
    pub dry_run: bool,
    /// The hosts the run acts on.
    pub scope: Scope,
    /// The image's and the Clusterfile's plugins, loaded and checked.
    pub plugins: crate::plugins::PluginSet,
}

/// Which hosts a run acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every host of the Clusterfile (`kiln run`).
    #[default]
    Cluster,
    /// Only these hosts, joining a running cluster (`kiln scale-up`). Of the others, only
    /// master0 is reached (preflight, join data); nothing is sent to them.
    Join(BTreeSet<IpAddr>),
}

impl Scope {
    /// The plugin phases on master0 before and after this run's work.
    pub fn cluster_phases(&self) -> (Phase, Phase) {
        match self {
            Self::Cluster => (Phase::PreInstall, Phase::PostInstall),
            Self::Join(_) => (Phase::PreScaleup, Phase::PostScaleup),
        }
    }

    /// What the plugins are told kiln is doing (`KilnOperation`).
    pub fn operation(&self) -> hooks::Operation {
        match self {
            Self::Cluster => hooks::Operation::Run,
            Self::Join(_) => hooks::Operation::ScaleUp,
        }
    }
}

/// What a run would do on one host (`--dry-run`).
#[derive(Debug, Serialize)]
pub struct HostPlan {
    pub host: IpAddr,
    pub roles: Vec<String>,
    pub platform: String,
    pub registry_host: bool,
    pub blobs_to_send: usize,
    pub bytes_to_send: u64,
    pub phases: Vec<&'static str>,
    /// Plugin hooks that would run here, `phase: plugin, plugin` per phase.
    pub hooks: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct RunOutcome {
    pub distributed: BTreeMap<IpAddr, DistributeOutcome>,
    /// Filled by `--dry-run` instead of doing anything.
    pub plan: Vec<HostPlan>,
}

/// A run in progress, shared by the phases (the cluster runtimes' own modules included).
pub(super) struct Context<'a> {
    pub(super) request: &'a RunRequest<'a>,
    runtime: ClusterRuntime,
    fleet: Fleet,
    pub(super) platforms: BTreeMap<IpAddr, PlatformImage>,
    /// Each host's node name: its hostname (or the one a plugin gives it), lower-cased as
    /// Kubernetes wants.
    pub(super) node_names: BTreeMap<IpAddr, String>,
    /// Each host's clock minus this machine's, as preflight measured it (`ClockOffset` for hooks).
    clock_offsets: BTreeMap<IpAddr, f64>,
    /// Hosts whose clock-skew check a plugin repairs in `pre-init-host`: the plugin.
    clock_repairs: BTreeMap<IpAddr, String>,
    /// What each reached host's kernel offers (Kubernetes adapts to it; preflight showed how).
    pub(super) kernels: BTreeMap<IpAddr, KernelFeatures>,
    pub(super) dir: String,
    pub(super) rootfs: String,
    registry_hosts: BTreeSet<IpAddr>,
    pub(super) master0: Host,
    targets: Vec<Host>,
    journal: std::sync::Mutex<Journal>,
    journal_path: PathBuf,
}

impl Context<'_> {
    /// Every host of the cluster (for env, the masters list, the apiserver VIP).
    pub(super) fn hosts(&self) -> &[Host] {
        &self.request.clusterfile.cluster.hosts
    }

    /// The hosts this run acts on: all of them, or the joining ones.
    pub(super) fn targets(&self) -> &[Host] {
        &self.targets
    }

    /// The hosts of the cluster this run does not act on (scale-up's existing hosts).
    pub(super) fn others(&self) -> impl Iterator<Item = &Host> {
        self.hosts().iter().filter(|h| !self.targets.iter().any(|t| t.ip == h.ip))
    }

    #[allow(clippy::result_large_err)] // the same error the session's own calls return
    pub(super) fn session_for(&self, host: &Host) -> Result<&Arc<Session>, SshError> {
        self.fleet
            .sessions
            .get(&host.ip)
            .ok_or_else(|| SshError::Lost { host: host.ip.to_string(), reason: "no session".into() })
    }

    /// The image carries `registry/` content (not built with `--build-mode lite`).
    fn has_registry_content(&self) -> bool {
        self.platforms.values().any(|p| p.manifest.layers().iter().any(media::is_registry_layer))
    }

    pub(super) fn done(&self, phase: &str, who: &str) -> bool {
        self.journal.lock().is_ok_and(|j| j.is_done(phase, who))
    }

    pub(super) fn record(&self, phase: &str, who: &str, result: Result<(), &str>) -> Result<(), RunError> {
        let snapshot = {
            let Ok(mut j) = self.journal.lock() else { return Ok(()) };
            match result {
                Ok(()) => j.mark_done(phase, who),
                Err(e) => j.mark_failed(phase, who, e),
            }
            j.clone()
        };
        snapshot.save(&self.journal_path)?;
        Ok(())
    }

    /// Env for a script on `host`.
    pub(super) fn env_for(&self, host: &Host) -> BTreeMap<String, String> {
        let image_env =
            self.platforms.get(&host.ip).and_then(|p| p.extension().ok().flatten()).map(|e| e.env).unwrap_or_default();
        script_env(&self.request.clusterfile.cluster, host, &self.master0, &self.rootfs, &image_env)
    }

    /// Env for a hook on `host`: its scripts' env plus `ClockOffset` (its clock minus this
    /// machine's, in seconds, as preflight measured it) and `ClockSkewHosts` (the hosts whose
    /// clocks a plugin repairs in `pre-init-host`), for a time-sync plugin.
    pub(super) fn hook_env(&self, host: &Host) -> BTreeMap<String, String> {
        let mut env = self.env_for(host);
        if let Some(offset) = self.clock_offsets.get(&host.ip) {
            env.insert("ClockOffset".into(), format!("{offset:+.3}"));
        }
        let skewed: Vec<String> = self.clock_repairs.keys().map(ToString::to_string).collect();
        env.insert("ClockSkewHosts".into(), skewed.join(","));
        env
    }

    /// The hosts whose clock-skew check a plugin repairs, with the plugin.
    pub(super) fn clock_repairs(&self) -> &BTreeMap<IpAddr, String> {
        &self.clock_repairs
    }

    /// Runs `command` in the rootfs on `host` with its env; the output goes to the reporter.
    pub(super) async fn script(&self, reporter: &dyn RunReporter, host: &Host, command: &str) -> Result<(), SshError> {
        let session = self.session_for(host)?;
        let full = with_env(&self.env_for(host), &format!("cd {} && {command}", quote(&self.rootfs)));
        let who = host.ip.to_string();
        // Each line is shown (and logged) as the script prints it; errors show the script, not
        // the env prefix.
        session.run_live(&full, |line| reporter.step(&who, line)).await.map_err(|e| match e {
            SshError::Command { host, status, output, .. } => {
                SshError::Command { host, command: command.to_owned(), status, output }
            }
            other => other,
        })?;
        Ok(())
    }
}

/// Env for the image's scripts on `host`: image env, cluster env, host env, then kiln's own
/// (Sealer's names: `HostIP`, `Master0IP`, `MasterIPs`, `NodeIPs`, `Role`, `ClusterName`, plus
/// `RootfsDir` and the registry's `RegistryDomain`, `RegistryPort`, `RegistryURL`).
pub fn script_env(
    cluster: &crate::clusterfile::Cluster,
    host: &Host,
    master0: &Host,
    rootfs: &str,
    image_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = image_env.clone();
    env.extend(cluster.env.clone());
    env.extend(host.env.clone());
    let masters: Vec<String> = cluster.hosts.iter().filter(|h| h.is_master()).map(|h| h.ip.to_string()).collect();
    let nodes: Vec<String> = cluster.hosts.iter().filter(|h| !h.is_master()).map(|h| h.ip.to_string()).collect();
    let role = host.roles.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    env.insert("HostIP".into(), host.ip.to_string());
    env.insert("Master0IP".into(), master0.ip.to_string());
    env.insert("MasterIPs".into(), masters.join(","));
    env.insert("NodeIPs".into(), nodes.join(","));
    env.insert("Role".into(), role);
    env.insert("ClusterName".into(), cluster.name.clone());
    env.insert("RootfsDir".into(), rootfs.to_owned());
    if let Registry::Local(r) = &cluster.registry {
        env.insert("RegistryDomain".into(), r.domain.clone());
        env.insert("RegistryPort".into(), r.port.to_string());
        env.insert("RegistryURL".into(), format!("{}:{}", r.domain, r.port));
    }
    env
}

pub(super) fn step_error(
    phase: &'static str,
    host: impl ToString,
    e: impl std::error::Error + Send + Sync + 'static,
) -> RunError {
    RunError::Step { phase, host: host.to_string(), source: Box::new(e) }
}

/// Runs every phase; returns what was sent where.
pub async fn run(request: &RunRequest<'_>, reporter: &dyn RunReporter) -> Result<RunOutcome, RunError> {
    let cluster = &request.clusterfile.cluster;
    let runtime = ClusterRuntime::of(&request.image).map_err(RunError::Runtime)?;
    reporter.phase(PHASES[0].0, PHASES[0].1);
    let journal_path = request.state_dir.join("journal.json");
    // Every layer is checked (and measured) here before any host is reached.
    let need = {
        let (store, image, keep) = (request.store.clone(), request.image.clone(), request.keep_layers);
        tokio::task::spawn_blocking(move || super::distribute::disk_need(&store, &image, keep))
            .await
            .map_err(|e| step_error("preflight", "-", std::io::Error::other(e)))?
            .map_err(|e| step_error("preflight", "-", e))?
    };
    let mut preflight = request.preflight.clone().with_disk_need(need);
    // The registry an earlier run of this cluster started holds its port: not a conflict.
    if let Some(previous) = Journal::load(&journal_path)? {
        for host in &cluster.hosts {
            let who = host.ip.to_string();
            let held = preflight.ports_held_by_cluster.entry(host.ip).or_default();
            if let Registry::Local(r) = &cluster.registry
                && previous.is_done("registry", &who)
            {
                held.insert(r.port);
            }
            // The kubelet and control plane an earlier run started hold theirs.
            if previous.is_done("kube-init", &who) || previous.is_done("kube-join", &who) {
                held.extend(super::preflight::KUBELET_PORTS);
                if host.is_master() {
                    held.extend(super::preflight::CONTROL_PLANE_PORTS);
                }
            }
        }
    }
    let master0 = request.clusterfile.master0().cloned().ok_or_else(|| RunError::Step {
        phase: "preflight",
        host: "-".into(),
        source: "no master".into(),
    })?;
    let targets: Vec<Host> = match &request.scope {
        Scope::Cluster => cluster.hosts.clone(),
        Scope::Join(joining) => cluster.hosts.iter().filter(|h| joining.contains(&h.ip)).cloned().collect(),
    };
    // The hosts reached: the targets, and master0 for what joining needs from the cluster.
    let mut reached = targets.clone();
    if !reached.iter().any(|h| h.ip == master0.ip) {
        reached.insert(0, master0.clone());
    }
    let reached_cluster = crate::clusterfile::Cluster { hosts: reached, ..cluster.clone() };
    let (report, fleet): (CheckReport, Fleet) = super::check(&reached_cluster, &request.connect, &preflight).await;
    if report.failed() > 0 {
        fleet.close().await;
        return Err(RunError::Preflight { failed: report.failed(), results: report.results });
    }
    let mut platforms = BTreeMap::new();
    for host in &reached_cluster.hosts {
        let facts = &report.facts[&host.ip];
        let variant = request
            .image
            .for_platform(&facts.platform())
            .cloned()
            .ok_or_else(|| RunError::NoVariant { host: host.ip.to_string(), platform: facts.platform() })?;
        platforms.insert(host.ip, variant);
    }
    let node_names = reached_cluster
        .hosts
        .iter()
        .map(|h| {
            let planned = preflight.planned_hostnames.get(&h.ip).map(|p| p.name.clone());
            (h.ip, planned.unwrap_or_else(|| report.facts[&h.ip].hostname.to_lowercase()))
        })
        .collect();
    let clock_repairs: BTreeMap<IpAddr, String> = report
        .results
        .iter()
        .filter(|r| r.outcome == super::preflight::Outcome::Repair && r.check == "clock-skew")
        .filter_map(|r| Some((r.host, preflight.clock_repairs.get(&r.host)?.clone())))
        .collect();
    let adapted = |r: &&super::preflight::CheckResult| {
        matches!(r.outcome, super::preflight::Outcome::Repair | super::preflight::Outcome::Adapt)
    };
    for r in report.results.iter().filter(adapted) {
        reporter.step(&r.host.to_string(), &format!("{}: {}", r.check, r.detail));
    }
    let clock_offsets = report.facts.iter().map(|(ip, f)| (*ip, f.clock_offset_s)).collect();
    let kernels = report.facts.iter().map(|(ip, f)| (*ip, f.kernel_features())).collect();
    let dir = distribute::cluster_dir(&cluster.data_root, &cluster.name);
    let journal = Journal::load_for(&journal_path, &cluster.name, &request.image.entry.digest.to_string())?;
    let ctx = Context {
        request,
        fleet,
        runtime,
        platforms,
        node_names,
        clock_offsets,
        clock_repairs,
        kernels,
        rootfs: distribute::rootfs_dir(&dir),
        dir,
        registry_hosts: super::preflight::registry_hosts(cluster),
        master0,
        targets,
        journal: std::sync::Mutex::new(journal),
        journal_path,
    };
    let mut outcome = RunOutcome::default();
    if request.dry_run {
        outcome.plan = plan(&ctx).await;
        ctx.fleet.close().await;
        return Ok(outcome);
    }
    let result = phases(&ctx, reporter, &mut outcome).await;
    if result.is_ok()
        && let Ok(mut j) = ctx.journal.lock()
    {
        j.mark_completed();
        j.save(&ctx.journal_path)?;
    }
    // master0 keeps a copy of the journal, so state survives the operator's laptop. A failed
    // join leaves the existing hosts, master0 among them, exactly as they were.
    let joining = matches!(request.scope, Scope::Join(_));
    if (result.is_ok() || !joining)
        && let Some(session) = ctx.fleet.sessions.get(&ctx.master0.ip)
    {
        super::state::copy_journal_to_master0(session, &ctx.dir, &ctx.journal_path).await;
    }
    // And the whole state once a run finished, so another machine can take the cluster over.
    if result.is_ok()
        && let Some(session) = ctx.fleet.sessions.get(&ctx.master0.ip)
    {
        let copied = super::state::copy_to_master0(session, &ctx.dir, &request.state_dir, request.clusterfile).await;
        if let Err(e) = copied {
            reporter.step(&ctx.master0.ip.to_string(), &format!("warning: master0's copy of the state: {e}"));
        }
    }
    ctx.fleet.close().await;
    result.map(|()| outcome)
}

/// Read-only: which blobs each host lacks, and which phases would touch it.
async fn plan(ctx: &Context<'_>) -> Vec<HostPlan> {
    let mut out = Vec::new();
    for host in ctx.targets() {
        let image = &ctx.platforms[&host.ip];
        let registry_host = ctx.registry_hosts.contains(&host.ip);
        // The same listing and rules as the distribution itself, read-only.
        let holdings = match ctx.fleet.sessions.get(&host.ip) {
            Some(session) => HostHoldings::read(session, &ctx.dir, false).await.ok(),
            None => None,
        };
        // Each layer with its digest and diff_id (`None` if the image's JSON has no valid pair:
        // then it counts as missing).
        let diff_ids = image.config.rootfs().diff_ids();
        let layers: Vec<(&oci_spec::image::Descriptor, Option<(Digest, Digest)>)> = image
            .manifest
            .layers()
            .iter()
            .enumerate()
            .filter(|(_, l)| registry_host || !media::is_registry_layer(l))
            .map(|(i, l)| {
                let diff_id = diff_ids.get(i).and_then(|d| d.parse::<Digest>().ok());
                (l, Digest::from_oci(l.digest()).ok().zip(diff_id))
            })
            .collect();
        let wanted_id = distribute::rootfs_id(layers.iter().filter_map(|(_, ids)| ids.as_ref().map(|(d, _)| d)));
        let rebuild = holdings.as_ref().is_none_or(|h| h.needs_rebuild(&wanted_id));
        let missing: Vec<&oci_spec::image::Descriptor> = layers
            .iter()
            .filter(|(_, ids)| match (&holdings, ids) {
                (Some(h), Some((digest, diff_id))) => h.lacks(digest, diff_id, rebuild),
                _ => true,
            })
            .map(|(l, _)| *l)
            .collect();
        let mut phases = vec!["distribute", "os-tune"];
        if ctx.has_registry_content() {
            if registry_host {
                phases.push("registry");
            }
            phases.push("registry-clients");
        }
        phases.push("container-runtime");
        match ctx.runtime {
            ClusterRuntime::Shell => phases.push("bring-up"),
            ClusterRuntime::Kubernetes => {
                phases.push("kube-prepare");
                phases.push(if host.ip == ctx.master0.ip { "kube-init" } else { "kube-join" });
            }
        }
        if host.ip == ctx.master0.ip {
            phases.push("apps");
        }
        if ctx.runtime == ClusterRuntime::Kubernetes {
            phases.push("nodes-ready");
        }
        let (before, after) = ctx.request.scope.cluster_phases();
        let hooks = super::hooks::planned(
            &ctx.request.plugins,
            host,
            host.ip == ctx.master0.ip,
            &[before, Phase::PreInitHost, Phase::PostInitHost, after],
        );
        out.push(HostPlan {
            hooks,
            host: host.ip,
            roles: host.roles.iter().map(ToString::to_string).collect(),
            platform: image.platform.to_string(),
            registry_host,
            blobs_to_send: missing.len(),
            bytes_to_send: missing.iter().map(|l| l.size()).sum(),
            phases,
        });
    }
    out
}

async fn phases(ctx: &Context<'_>, reporter: &dyn RunReporter, outcome: &mut RunOutcome) -> Result<(), RunError> {
    let (before, after) = ctx.request.scope.cluster_phases();
    distribute_phase(ctx, reporter, outcome).await?;
    // Hooks run in the rootfs, so after distribution; `pre-init-host` before anything else
    // changes a host.
    hooks::cluster_hooks(ctx, reporter, before).await?;
    hooks::host_hooks(ctx, reporter, Phase::PreInitHost, ctx.targets()).await?;
    hooks::check_promises(ctx, reporter).await?;
    tune_phase(ctx, reporter).await?;
    registry_phase(ctx, reporter).await?;
    container_runtime_phase(ctx, reporter).await?;
    hooks::host_hooks(ctx, reporter, Phase::PostInitHost, ctx.targets()).await?;
    match ctx.runtime {
        ClusterRuntime::Shell => {
            bring_up_phase(ctx, reporter).await?;
            apps_phase(ctx, reporter).await?;
        }
        ClusterRuntime::Kubernetes => {
            reporter.phase(PHASES[5].0, PHASES[5].1);
            super::kubernetes::bring_up(ctx, reporter).await?;
            apps_phase(ctx, reporter).await?;
            super::kubernetes::wait_ready(ctx, reporter).await?;
        }
    }
    hooks::cluster_hooks(ctx, reporter, after).await
}

async fn distribute_phase(
    ctx: &Context<'_>,
    reporter: &dyn RunReporter,
    outcome: &mut RunOutcome,
) -> Result<(), RunError> {
    reporter.phase(PHASES[1].0, PHASES[1].1);
    // One containment check per platform, shared by its hosts.
    let mut plans: BTreeMap<String, RootfsPlan> = BTreeMap::new();
    for image in ctx.platforms.values() {
        if let std::collections::btree_map::Entry::Vacant(slot) = plans.entry(image.manifest_digest.to_string()) {
            let store = ctx.request.store.clone();
            let image = image.clone();
            let plan = tokio::task::spawn_blocking(move || RootfsPlan::new(&store, &image))
                .await
                .map_err(|e| step_error("distribute", "-", std::io::Error::other(e)))?
                .map_err(|e| step_error("distribute", "-", e))?;
            slot.insert(plan);
        }
    }
    let spool = LayerSpool::new(ctx.request.store).map_err(|e| step_error("distribute", "-", e))?;
    let distributor = Distributor {
        transfer: ctx.request.layer_transfer,
        keep_layers: ctx.request.keep_layers,
        spool: &spool,
        reporter,
    };
    // Always re-checked (cheap: a listing and an id compare), so a host that lost its
    // rootfs since the last run gets it again.
    let results: Vec<(IpAddr, Result<DistributeOutcome, DistributeError>)> =
        futures_util::stream::iter(ctx.targets().iter())
            .map(|host| {
                let plan = &plans[&ctx.platforms[&host.ip].manifest_digest.to_string()];
                let distributor = &distributor;
                async move {
                    let session = match ctx.session_for(host) {
                        Ok(s) => s,
                        Err(e) => return (host.ip, Err(e.into())),
                    };
                    let registry_host = ctx.registry_hosts.contains(&host.ip);
                    let r = distributor.distribute(session, &ctx.dir, plan, registry_host).await;
                    (host.ip, r)
                }
            })
            .buffer_unordered(ctx.request.connect.max_hosts)
            .collect()
            .await;
    let done = record_all(ctx, "distribute", results)?;
    outcome.distributed.extend(done);
    Ok(())
}

/// Journals each host's result; returns the successes, or the first failure once all are saved.
fn record_all<T, E: std::error::Error + Send + Sync + 'static>(
    ctx: &Context<'_>,
    phase: &'static str,
    results: Vec<(IpAddr, Result<T, E>)>,
) -> Result<Vec<(IpAddr, T)>, RunError> {
    let mut first_error = None;
    let mut done = Vec::new();
    for (ip, r) in results {
        match r {
            Ok(value) => {
                ctx.record(phase, &ip.to_string(), Ok(()))?;
                done.push((ip, value));
            }
            Err(e) => {
                ctx.record(phase, &ip.to_string(), Err(&crate::error_chain(&e)))?;
                first_error.get_or_insert(step_error(phase, ip, e));
            }
        }
    }
    first_error.map_or(Ok(done), Err)
}

/// Runs `step` on master0 for the cluster as a whole (journaled as `who`), unless the journal
/// has it done already; journals its result. (`step` is lazy: nothing runs when it is skipped.)
pub(super) async fn master0_step<E>(
    ctx: &Context<'_>,
    phase: &'static str,
    who: &str,
    step: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), RunError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    if ctx.done(phase, who) {
        return Ok(());
    }
    match step.await {
        Ok(()) => ctx.record(phase, who, Ok(())),
        Err(e) => {
            ctx.record(phase, who, Err(&crate::error_chain(&e)))?;
            Err(step_error(phase, ctx.master0.ip, e))
        }
    }
}

/// Runs `f` on each of `hosts` not yet done for `phase`, in parallel (bounded), journaling each.
pub(super) async fn on_hosts<'h, F, Fut, E>(
    ctx: &Context<'_>,
    phase: &'static str,
    hosts: impl IntoIterator<Item = &'h Host>,
    f: F,
) -> Result<(), RunError>
where
    F: Fn(&'h Host) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let pending: Vec<&Host> = hosts.into_iter().filter(|h| !ctx.done(phase, &h.ip.to_string())).collect();
    let results: Vec<(IpAddr, Result<(), E>)> = futures_util::stream::iter(pending)
        .map(|h| {
            let fut = f(h);
            async move { (h.ip, fut.await) }
        })
        .buffer_unordered(ctx.request.connect.max_hosts)
        .collect()
        .await;
    record_all(ctx, phase, results).map(|_| ())
}

async fn tune_phase(ctx: &Context<'_>, reporter: &dyn RunReporter) -> Result<(), RunError> {
    reporter.phase(PHASES[2].0, PHASES[2].1);
    let script = super::tune::apply_script(&ctx.dir, &ctx.rootfs);
    on_hosts(ctx, "os-tune", ctx.targets(), |host| {
        let script = script.clone();
        async move { ctx.session_for(host)?.run(&script).await.map(|_| ()) }
    })
    .await
}

async fn registry_phase(ctx: &Context<'_>, reporter: &dyn RunReporter) -> Result<(), RunError> {
    reporter.phase(PHASES[3].0, PHASES[3].1);
    let Registry::Local(registry) = &ctx.request.clusterfile.cluster.registry else { return Ok(()) };
    if !ctx.has_registry_content() {
        reporter.step("cluster", "the image carries no registry content (built with --build-mode lite): skipped");
        return Ok(());
    }
    let access = registry_access::load_or_create(
        &ctx.request.state_dir,
        &ctx.request.clusterfile.cluster.name,
        registry,
        ctx.registry_hosts.iter().copied(),
    )?;
    let htpasswd = access.credentials.htpasswd()?;
    let registry_hosts: Vec<&Host> = ctx.targets().iter().filter(|h| ctx.registry_hosts.contains(&h.ip)).collect();
    on_hosts(ctx, "registry", registry_hosts, |host| {
        let (access, htpasswd) = (&access, &htpasswd);
        async move {
            // Sealer's places, which its images' init-registry.sh read: `certs/<domain>.{crt,key}`
            // and `etc/registry_htpasswd`. Secrets go over stdin, never on a command line.
            let session = ctx.session_for(host)?;
            let certs = format!("{}/certs/{}", ctx.rootfs, registry.domain);
            match &access.tls {
                Some(tls) => {
                    session.upload(tls.chain_pem.as_bytes(), &format!("{certs}.crt"), 0o644).await?;
                    session.upload(tls.key_pem.expose().as_bytes(), &format!("{certs}.key"), 0o600).await?;
                }
                None => {
                    session
                        .run(&format!("rm -f {} {}", quote(&format!("{certs}.crt")), quote(&format!("{certs}.key"))))
                        .await?;
                }
            }
            let htpasswd_path = format!("{}/etc/registry_htpasswd", ctx.rootfs);
            session.upload(htpasswd.expose().as_bytes(), &htpasswd_path, 0o600).await?;
            let command = format!(
                "if [ -f scripts/init-registry.sh ]; then cd scripts && bash init-registry.sh {} {} {}; \
                 else echo 'the image has no scripts/init-registry.sh' >&2; exit 1; fi",
                registry.port,
                quote(&format!("{}/registry", ctx.rootfs)),
                quote(&registry.domain)
            );
            ctx.script(reporter, host, &command).await
        }
    })
    .await?;
    // Every host resolves the registry domain to a registry host (its own when it is one) and
    // pulls from it for the mirrored upstreams, with no manifest rewriting.
    let endpoint_for =
        |host: &Host| -> IpAddr { if ctx.registry_hosts.contains(&host.ip) { host.ip } else { ctx.master0.ip } };
    let client = RegistryClientConfig::new(registry, &access);
    on_hosts(ctx, "registry-clients", ctx.targets(), |host| {
        let client = &client;
        async move {
            let session = ctx.session_for(host)?;
            session.run(&client.prepare_script(&ctx.dir, endpoint_for(host))).await?;
            for file in client.files() {
                session.upload(file.content.expose().as_bytes(), &file.path, file.mode).await?;
            }
            Ok::<(), SshError>(())
        }
    })
    .await
}

/// How every host reaches the in-cluster registry: containerd `hosts.toml` mirrors for each
/// upstream (pointing at the registry with its CA and credentials) and the CA itself.
pub struct RegistryClientConfig {
    domain: String,
    files: Vec<ClientFile>,
}

/// One file written on every host. `hosts.toml` carries the registry credentials, so it is
/// 0600 and sent over stdin like every secret.
pub struct ClientFile {
    pub path: String,
    pub content: Secret,
    pub mode: u32,
}

impl RegistryClientConfig {
    pub fn new(registry: &LocalRegistry, access: &RegistryAccess) -> Self {
        let (domain, port) = (registry.domain.clone(), registry.port);
        let registry_dir = format!("{CONTAINERD_CERTS_DIR}/{domain}:{port}");
        let scheme = if access.tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{domain}:{port}");
        let ca_path = format!("{registry_dir}/ca.crt");
        let host_block = |url: &str, override_path: bool| {
            let mut block = format!("[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
            if override_path {
                block.push_str("  override_path = true\n");
            }
            if access.tls.is_some() {
                block.push_str(&format!("  ca = \"{ca_path}\"\n"));
            }
            block.push_str(&format!(
                "  [host.\"{url}\".header]\n    Authorization = \"{}\"\n",
                access.credentials.basic_auth().expose()
            ));
            block
        };
        let mut files: Vec<ClientFile> = MIRRORED_UPSTREAMS
            .iter()
            .map(|upstream| {
                // docker.io images keep Sealer's paths; other registries live under their host name.
                let toml = if *upstream == "docker.io" {
                    format!("server = \"https://registry-1.docker.io\"\n\n{}", host_block(&endpoint, false))
                } else {
                    format!(
                        "server = \"https://{upstream}\"\n\n{}",
                        host_block(&format!("{endpoint}/v2/{upstream}"), true)
                    )
                };
                ClientFile {
                    path: format!("{CONTAINERD_CERTS_DIR}/{upstream}/hosts.toml"),
                    content: Secret::new(toml),
                    mode: 0o600,
                }
            })
            .collect();
        files.push(ClientFile {
            path: format!("{registry_dir}/hosts.toml"),
            content: Secret::new(format!("server = \"{endpoint}\"\n\n{}", host_block(&endpoint, false))),
            mode: 0o600,
        });
        if let Some(tls) = &access.tls {
            files.push(ClientFile { path: ca_path, content: Secret::new(tls.ca_pem.clone()), mode: 0o644 });
        }
        Self { domain, files }
    }

    /// `/etc/hosts` entry (tagged so `delete` can remove it) and the directories the files go
    /// in; the ones it creates are listed in `<dir>/.kiln/created` for `delete`. No secrets.
    pub fn prepare_script(&self, dir: &str, registry_ip: IpAddr) -> String {
        let mut s = format!(
            "set -e\nsed -i '/# kiln-registry$/d' /etc/hosts\necho {} >> /etc/hosts\n\
             mk() {{ [ -d \"$1\" ] || {{ mkdir \"$1\" && echo \"$1\" >> {created}; }}; }}\n\
             mk /etc/containerd; mk {CONTAINERD_CERTS_DIR}\n",
            quote(&format!("{registry_ip} {} # kiln-registry", self.domain)),
            created = quote(&format!("{dir}/.kiln/created")),
        );
        let dirs: BTreeSet<&str> = self.files.iter().filter_map(|f| f.path.rsplit_once('/').map(|(d, _)| d)).collect();
        for d in dirs {
            s.push_str(&format!("mk {}\n", quote(d)));
        }
        s
    }

    pub fn files(&self) -> &[ClientFile] {
        &self.files
    }
}

/// Host-specific containerd settings in the rootfs, which `scripts/containerd.sh` installs.
const HOST_DROP_IN: &str = "etc/containerd/conf.d/kiln-host.toml";

async fn container_runtime_phase(ctx: &Context<'_>, reporter: &dyn RunReporter) -> Result<(), RunError> {
    reporter.phase(PHASES[4].0, PHASES[4].1);
    let script = format!("scripts/{}.sh", ctx.request.clusterfile.cluster.cri());
    on_hosts(ctx, "container-runtime", ctx.targets(), |host| {
        // What this host's kernel needs of containerd (preflight showed it), beside the
        // image's config, which imports `/etc/containerd/conf.d/*.toml`.
        let drop_in = ctx.kernels.get(&host.ip).and_then(crate::kubernetes::node_kernel::containerd_drop_in);
        let settings = match drop_in {
            Some(toml) => format!("mkdir -p etc/containerd/conf.d && printf '%s' {} > {HOST_DROP_IN}", quote(toml)),
            None => format!("rm -f {HOST_DROP_IN}"),
        };
        let command = format!("{settings} && if [ -f {s} ]; then bash {s}; fi", s = quote(&script));
        async move { ctx.script(reporter, host, &command).await }
    })
    .await
}

async fn bring_up_phase(ctx: &Context<'_>, reporter: &dyn RunReporter) -> Result<(), RunError> {
    reporter.phase(PHASES[5].0, PHASES[5].1);
    let masters: Vec<&Host> = ctx.targets().iter().filter(|h| h.is_master() && h.ip != ctx.master0.ip).collect();
    let nodes: Vec<&Host> = ctx.targets().iter().filter(|h| h.roles.contains(&Role::Node) || !h.is_master()).collect();
    // A joining host never re-initialises the cluster: master0 ran init when the cluster began.
    let master0 = ctx.targets().iter().filter(|h| h.ip == ctx.master0.ip);
    on_hosts(ctx, "bring-up", master0, |host| async move {
        ctx.script(reporter, host, "bash scripts/init-master0.sh").await
    })
    .await?;
    // Masters join one at a time (quorum changes one member at a time), nodes in parallel.
    for m in masters {
        on_hosts(ctx, "bring-up", [m], |host| async move {
            ctx.script(reporter, host, "if [ -f scripts/join-master.sh ]; then bash scripts/join-master.sh; fi").await
        })
        .await?;
    }
    on_hosts(ctx, "bring-up", nodes, |host| async move {
        ctx.script(reporter, host, "if [ -f scripts/join-node.sh ]; then bash scripts/join-node.sh; fi").await
    })
    .await
}

/// What a run launches on master0: commands, or apps by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launched {
    Commands(Vec<String>),
    Apps(Vec<String>),
}

impl Launched {
    /// Sealer's precedence: global cmds (flags, `spec.cmd`, Application `cmds`) > the image's
    /// CMDS > the chosen apps (`appNames`, Application `launchApps`, the image's LAUNCH).
    pub fn of(ext: &ImageExtension, clusterfile: &Clusterfile) -> Self {
        let cluster = &clusterfile.cluster;
        let app_override = clusterfile.applications.last();
        if !cluster.cmds.is_empty() {
            return Self::Commands(cluster.cmds.clone());
        }
        if let Some(cmds) = app_override.and_then(|a| a.cmds.clone()).filter(|c| !c.is_empty()) {
            return Self::Commands(cmds);
        }
        if !ext.launch.cmds.is_empty() {
            return Self::Commands(ext.launch.cmds.clone());
        }
        let names = cluster
            .app_names
            .clone()
            .or_else(|| app_override.and_then(|a| a.launch_apps.clone()))
            .unwrap_or_else(|| ext.launch.app_names.clone());
        Self::Apps(names.into_iter().filter(|n| !n.is_empty()).collect())
    }

    /// The apps launched by name; `None` where commands replace them.
    pub fn app_names(&self) -> Option<&[String]> {
        match self {
            Self::Apps(names) => Some(names),
            Self::Commands(_) => None,
        }
    }
}

/// What runs on master0: the launch commands, or each chosen app's (its Application
/// `launchCmds` in the Clusterfile, else what its type runs).
pub fn launch_commands(ext: &ImageExtension, clusterfile: &Clusterfile) -> Vec<String> {
    let names = match Launched::of(ext, clusterfile) {
        Launched::Commands(commands) => return commands,
        Launched::Apps(names) => names,
    };
    let app_override = clusterfile.applications.last();
    names
        .iter()
        .filter_map(|name| {
            let configured = app_override.and_then(|a| a.configs.iter().find(|c| &c.name == name));
            if let Some(cmds) = configured.and_then(|c| c.launch_cmds.clone()).filter(|c| !c.is_empty()) {
                let dir = ext.app(name).map(|a| a.dir()).unwrap_or_default();
                return Some(format!("cd {} && {}", quote(&dir), cmds.join(" && ")));
            }
            ext.app(name).and_then(|a| a.launch_command())
        })
        .collect()
}

async fn apps_phase(ctx: &Context<'_>, reporter: &dyn RunReporter) -> Result<(), RunError> {
    reporter.phase(PHASES[6].0, PHASES[6].1);
    let ext = ctx.platforms[&ctx.master0.ip].extension().ok().flatten().unwrap_or_default();
    for (i, command) in launch_commands(&ext, ctx.request.clusterfile).iter().enumerate() {
        let step = format!("{}#{i}", journal::CLUSTER);
        master0_step(ctx, "apps", &step, ctx.script(reporter, &ctx.master0, command)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{AppType, Application};

    fn ext() -> ImageExtension {
        let mut ext = ImageExtension::default();
        for (name, cmds) in [("a", vec![]), ("b", vec!["run-b".to_owned()])] {
            ext.applications.push(Application {
                name: name.into(),
                app_type: AppType::Shell,
                files: vec![format!("{name}.sh")],
                cmds,
                ..Default::default()
            });
        }
        ext.launch.app_names = vec!["a".into()];
        ext
    }

    fn clusterfile(extra: &str) -> Clusterfile {
        Clusterfile::parse(
            "C",
            &format!("kind: Cluster\nspec:\n{extra}  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n"),
        )
        .unwrap()
    }

    /// Sealer's precedence: global cmds > image CMDS > chosen apps' cmds > image LAUNCH.
    #[test]
    fn launch_precedence_follows_sealer() {
        let mut e = ext();
        assert_eq!(launch_commands(&e, &clusterfile("")), ["bash application/apps/a/a.sh"]);
        assert_eq!(launch_commands(&e, &clusterfile("  appNames: [b]\n")), ["cd application/apps/b/ && run-b"]);
        assert!(launch_commands(&e, &clusterfile("  appNames: [\"\"]\n")).is_empty(), "[\"\"] launches nothing");
        e.launch.cmds = vec!["image-cmd".into()];
        assert_eq!(launch_commands(&e, &clusterfile("  appNames: [b]\n")), ["image-cmd"]);
        assert_eq!(launch_commands(&e, &clusterfile("  cmd: [global]\n")), ["global"]);
    }

    /// The apps a run launches by name; none where commands replace them.
    #[test]
    fn launched_app_names_follow_launch_precedence() {
        let mut e = ext();
        let names =
            |e: &ImageExtension, extra: &str| Launched::of(e, &clusterfile(extra)).app_names().map(<[_]>::to_vec);
        assert_eq!(names(&e, ""), Some(vec!["a".to_owned()]));
        assert_eq!(names(&e, "  appNames: [b]\n"), Some(vec!["b".to_owned()]));
        assert_eq!(names(&e, "  appNames: [\"\"]\n"), Some(vec![]));
        assert_eq!(names(&e, "  cmd: [global]\n"), None);
        e.launch.cmds = vec!["image-cmd".into()];
        assert_eq!(names(&e, ""), None);
    }

    #[test]
    fn registry_client_config_is_valid_shell_and_toml_with_secrets_only_in_private_files() {
        let state = tempfile::tempdir().unwrap();
        let registry = LocalRegistry::default();
        let access =
            registry_access::load_or_create(state.path(), "c", &registry, ["10.0.0.1".parse().unwrap()]).unwrap();
        let config = RegistryClientConfig::new(&registry, &access);
        let script = config.prepare_script("/var/lib/kiln/data/c", "10.0.0.1".parse().unwrap());
        let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(script.contains("10.0.0.1 sea.hub # kiln-registry"));
        assert!(script.contains(".kiln/created"));
        assert!(script.contains("mk /etc/containerd/certs.d/quay.io"));
        let password = access.credentials.password.expose();
        let auth = access.credentials.basic_auth();
        assert!(!script.contains(password) && !script.contains(auth.expose()), "no secret on a command line");

        let quay = config.files().iter().find(|f| f.path == "/etc/containerd/certs.d/quay.io/hosts.toml").unwrap();
        assert_eq!(quay.mode, 0o600);
        let parsed: toml::Table = toml::from_str(quay.content.expose()).unwrap();
        assert_eq!(parsed["server"].as_str(), Some("https://quay.io"));
        let host = parsed["host"]["https://sea.hub:5000/v2/quay.io"].as_table().unwrap();
        assert_eq!(host["override_path"].as_bool(), Some(true));
        assert_eq!(host["ca"].as_str(), Some("/etc/containerd/certs.d/sea.hub:5000/ca.crt"));
        assert_eq!(host["header"]["Authorization"].as_str(), Some(auth.expose()));
        let docker: toml::Table = toml::from_str(
            config.files().iter().find(|f| f.path.ends_with("/docker.io/hosts.toml")).unwrap().content.expose(),
        )
        .unwrap();
        assert!(docker["host"].get("https://sea.hub:5000").is_some(), "docker.io keeps Sealer's paths");
        let ca = config.files().iter().find(|f| f.path.ends_with("sea.hub:5000/ca.crt")).unwrap();
        assert_eq!((ca.mode, ca.content.expose()), (0o644, access.tls.as_ref().unwrap().ca_pem.as_str()));

        let insecure = LocalRegistry { insecure: true, ..LocalRegistry::default() };
        let access = registry_access::load_or_create(state.path(), "c", &insecure, []).unwrap();
        let config = RegistryClientConfig::new(&insecure, &access);
        assert!(
            config
                .files()
                .iter()
                .all(|f| !f.path.ends_with("ca.crt") && !f.content.expose().contains("https://sea.hub"))
        );
        assert!(config.files().iter().any(|f| f.path == "/etc/containerd/certs.d/sea.hub:5000/hosts.toml"));
    }
}

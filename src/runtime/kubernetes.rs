//! The `kubernetes` cluster runtime over the hosts: kubeadm with the PKI and configuration kiln
//! makes on the operator (`crate::kubernetes`).
//!
//! Steps, each journaled per host so a failed run resumes where it stopped:
//! `kube-prepare` (every host, in parallel: the image's `scripts/init-kube.sh`, the apiserver's
//! `/etc/hosts` name, and on workers a local IPVS virtual server over every master; master0
//! pulls kubeadm's images), then while the next steps run every host pulls the images its node
//! will run (`node_images`),
//! `kube-init` (master0: its certificates and kubeconfigs, `kubeadm init --config`),
//! `kube-join` (masters one at a time, then workers in parallel, with a token from
//! `kubeadm token create --print-join-command` checked against kiln's CA and, for masters, the
//! key printed by `kubeadm init phase upload-certs`), `kube-nodes` (roles, labels, taints).
//! After the apps (the CNI is one), `nodes-ready` waits until every node is Ready.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::apiserver_balancer::{self, BalancerTarget};
use super::node_images::NodeImages;
use super::run::{Context, RunError, RunReporter, on_hosts, step_error};
use crate::clusterfile::{Cluster, Host, Registry};
use crate::kubernetes::kubeadm_config::{CRI_SOCKET, JoinSpec, KubeadmConfig, KubeadmConfigError, KubeadmInputs};
use crate::kubernetes::node_kernel::{ApiserverBalancer, NodeAdaptations};
use crate::kubernetes::pki::{APISERVER_DOMAIN, ClusterPki, ControlPlaneNode, PkiError, PkiSettings};
use crate::secret::Secret;
use crate::ssh::{Session, SshError, quote};

/// This runtime's journaled steps, in run order (after `container-runtime`; the apps run
/// between `kube-nodes` and `nodes-ready`).
pub const STEPS: [&str; 5] = ["kube-prepare", "kube-init", "kube-join", "kube-nodes", "nodes-ready"];

/// The workers' apiserver address (Sealer's), unless the Clusterfile env sets `VIP`.
pub const DEFAULT_VIP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 103, 97, 2));
/// Tags kiln's `/etc/hosts` line for the apiserver, so delete removes exactly it.
pub const HOSTS_TAG: &str = "# kiln-apiserver";
/// Links the usual CNIs and kube-proxy leave behind (kubeadm reset does not remove them).
const CNI_LINKS: &str = "cni0 flannel.1 flannel-v6.1 kube-ipvs0 kube-bridge vxlan.calico";
/// Where kiln's kubectl calls on master0 find their credentials.
pub(super) const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(transparent)]
    Config(#[from] KubeadmConfigError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the task making the cluster PKI stopped")]
    PkiTask(#[from] tokio::task::JoinError),
    #[error("`VIP` in the Clusterfile env is `{0}`, not an IP address")]
    Vip(String),
    #[error(
        "`kubeadm token create --print-join-command` on {host} printed no valid join command \
         ({lines} lines, not shown: they may hold a token)"
    )]
    JoinCommand { host: String, lines: usize },
    #[error(
        "the cluster on {host} has a CA kiln did not make (its hash is {found}, kiln's is {expected}); \
         was master0 initialised by another tool? `kiln delete` it first"
    )]
    ForeignCa { host: String, found: String, expected: String },
    #[error("`kubeadm init phase upload-certs` on {host} printed no certificate key")]
    CertificateKey { host: String },
    #[error(transparent)]
    Kubeadm(Box<KubeadmFailure>),
    #[error("{} of {} nodes not Ready after {seconds} s:\n{report}", not_ready, total)]
    NotReady { seconds: u64, not_ready: usize, total: usize, report: String },
    #[error("`kubectl get nodes -o json` on {host} printed what is not a node list: {reason}")]
    NodeList { host: String, reason: String },
    #[error(transparent)]
    NoBalancerImage(#[from] apiserver_balancer::NoBalancerImage),
    #[error(transparent)]
    Ssh(Box<SshError>),
}

impl From<SshError> for KubeError {
    fn from(e: SshError) -> Self {
        Self::Ssh(Box::new(e))
    }
}

/// A kubeadm call that failed, with what a user needs to see to fix it.
#[derive(Debug)]
pub struct KubeadmFailure {
    pub host: String,
    pub command: String,
    pub status: u32,
    pub output: String,
    pub kubelet_log: String,
    pub hint: Option<&'static str>,
}

impl fmt::Display for KubeadmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "`{}` failed on {} with exit code {}", self.command, self.host, self.status)?;
        writeln!(f, "--- last lines of its output ---\n{}", self.output.trim_end())?;
        write!(f, "--- journalctl -u kubelet (last lines) ---\n{}", self.kubelet_log.trim_end())?;
        if let Some(hint) = self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KubeadmFailure {}

/// A hint for the common causes of a kubeadm failure, read from its output and the kubelet's.
pub fn kubeadm_hint(text: &str) -> Option<&'static str> {
    let has = |needle: &str| text.contains(needle);
    if has("is in use") || has("address already in use") {
        Some("a port kubeadm needs is taken: stop what listens there (`ss -ltnp`), or `kiln delete` an old cluster")
    } else if has("cgroup driver") || has("cgroupDriver") {
        Some(
            "the kubelet's cgroup driver differs from the container runtime's: set `CgroupDriver` in the \
             Clusterfile env to match containerd's `SystemdCgroup`",
        )
    } else if has("ErrImagePull") || has("ImagePullBackOff") || has("failed to pull") || has("pull access denied") {
        Some(
            "an image is missing from the in-cluster registry: build the cluster image without \
             `--build-mode lite`, and check `imageRepository` in the kubeadm configuration",
        )
    } else if has("[ERROR Swap]") {
        Some("swap is on: kiln's os-tune turns it off; check `swapon --show` on the host")
    } else if has("timed out waiting for the condition") {
        Some("the kubelet or the control plane did not come up in time: read the kubelet's journal above")
    } else {
        None
    }
}

/// What `kubeadm token create --print-join-command` printed, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinCommand {
    pub endpoint: String,
    pub token: String,
    pub ca_cert_hash: String,
}

impl JoinCommand {
    /// `kubeadm join HOST:PORT --token T --discovery-token-ca-cert-hash sha256:H`, with the token
    /// and the hash in kubeadm's formats.
    pub fn parse(output: &str) -> Option<Self> {
        let line = output.lines().find(|l| l.trim_start().starts_with("kubeadm join "))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).copied();
        let token = after("--token")?;
        let hash = after("--discovery-token-ca-cert-hash")?;
        let valid_token = token.len() == 23
            && token.as_bytes()[6] == b'.'
            && token.bytes().enumerate().all(|(i, b)| i == 6 || b.is_ascii_lowercase() || b.is_ascii_digit());
        let valid_hash =
            hash.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let endpoint = words.get(2)?;
        (valid_token && valid_hash).then(|| Self {
            endpoint: (*endpoint).to_owned(),
            token: token.to_owned(),
            ca_cert_hash: hash.to_owned(),
        })
    }
}

/// The last line of `kubeadm init phase upload-certs --upload-certs`: 32 bytes in hex.
pub fn certificate_key(output: &str) -> Option<&str> {
    let key = output.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    (key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())).then_some(key)
}

/// Undoes what this runtime did on a host, before the image's clean scripts run; only where
/// kiln's marker says it set Kubernetes up there (`<dir>/.kiln/kubernetes`). CNI configs that
/// were in `/etc/cni/net.d` before the cluster stay (Sealer removes all of `/etc/cni`).
pub fn reset_script(dir: &str, vip: IpAddr) -> String {
    format!(
        "if [ -f {marker} ]; then\n\
         {balancer}\
         if command -v kubeadm >/dev/null 2>&1; then kubeadm reset -f --cri-socket {CRI_SOCKET} >/dev/null; fi\n\
         {leftover_pods}\
         {proxy_cleanup}\
         rm -rf /etc/kubernetes /var/lib/kubelet /var/lib/etcd\n\
         for l in {CNI_LINKS}; do ip link del $l 2>/dev/null || true; done\n\
         if [ -d /etc/cni/net.d ]; then for f in $(ls -A /etc/cni/net.d); do \
         grep -qxF \"$f\" {cni_before} 2>/dev/null || rm -rf \"/etc/cni/net.d/$f\"; done; fi\n\
         fi\n\
         sed -i '/{HOSTS_TAG}$/d' /etc/hosts\n",
        marker = quote(&format!("{dir}/.kiln/kubernetes")),
        cni_before = quote(&format!("{dir}/.kiln/cni-before")),
        balancer = apiserver_balancer::remove_script(vip),
        leftover_pods = leftover_pods_script(),
        proxy_cleanup = KUBE_PROXY_CLEANUP,
    )
}

/// Pods `kubeadm reset` left running: it warns and goes on when the runtime is slow to stop a
/// pod (seen on an emulated arm64 host), and a pod left running (flanneld) recreates what the
/// rest of the delete removes. Forced out, a few tries; still there stops the delete.
fn leftover_pods_script() -> String {
    format!(
        "if command -v crictl >/dev/null 2>&1 && [ -S {socket} ]; then \
         cri() {{ crictl --runtime-endpoint {CRI_SOCKET} --timeout 60s \"$@\"; }}; \
         for try in 1 2 3; do pods=$(cri pods -q 2>/dev/null); [ -n \"$pods\" ] || break; \
         cri rmp -f $pods >/dev/null 2>&1 || sleep 5; done; \
         if [ -n \"$(cri pods -q 2>/dev/null)\" ]; then echo \"pods are still running after kubeadm reset: \
         $(cri pods 2>&1 | tail -n +2 | head -n 5)\" >&2; exit 1; fi; fi\n",
        socket = CRI_SOCKET.trim_start_matches("unix://"),
    )
}

/// kube-proxy's rules, which `kubeadm reset` leaves: its own `--cleanup` (its nftables tables,
/// its iptables chains), run from its image after the reset stopped it, since the host may have
/// neither nft nor iptables. The image has no modprobe, so kube-proxy leaves IPVS alone (its
/// cleanup would flush every virtual server on the host, the operator's too).
const KUBE_PROXY_CLEANUP: &str = "\
    proxy=$(ctr -n k8s.io images ls -q 2>/dev/null | grep '/kube-proxy:' | head -n 1)\n\
    if [ -n \"$proxy\" ]; then ctr -n k8s.io containers rm kiln-proxy-cleanup >/dev/null 2>&1; \
    out=$(ctr -n k8s.io run --rm --net-host --privileged \"$proxy\" kiln-proxy-cleanup kube-proxy --cleanup 2>&1) \
    || { printf 'kube-proxy --cleanup (%s) failed, its rules are still in netfilter:\\n%s\\n' \"$proxy\" \"$out\" >&2; exit 1; }; fi\n";

/// The VIP workers reach the masters through: env `VIP`, else [`DEFAULT_VIP`].
pub fn cluster_vip(cluster: &Cluster) -> Result<IpAddr, KubeError> {
    match cluster.env.get("VIP") {
        None => Ok(DEFAULT_VIP),
        Some(text) => text.parse().map_err(|_| KubeError::Vip(text.clone())),
    }
}

/// What every step needs: the merged kubeadm configuration and the cluster's PKI.
struct Plan {
    config: KubeadmConfig,
    pki: ClusterPki,
    settings: PkiSettings,
    vip: IpAddr,
    masters: Vec<IpAddr>,
    init_config: String,
    /// The haproxy image as workers pull it from the in-cluster registry, if the image has one.
    haproxy_image: Option<String>,
}

impl Plan {
    async fn make(ctx: &Context<'_>) -> Result<Self, KubeError> {
        let cluster = &ctx.request.clusterfile.cluster;
        let session = ctx.session_for(&ctx.master0)?;
        // The image's kubeadm.yml as master0 holds it (every platform ships the same file).
        let image_config = session
            .run(&format!("f={}/etc/kubeadm.yml; if [ -f \"$f\" ]; then cat \"$f\"; fi", quote(&ctx.rootfs)))
            .await?
            .stdout_text();
        let registry = match &cluster.registry {
            Registry::Local(r) => format!("{}:{}", r.domain, r.port),
            Registry::External { domain, port: Some(port), .. } => format!("{domain}:{port}"),
            Registry::External { domain, port: None, .. } => domain.clone(),
        };
        let masters: Vec<IpAddr> = ctx.hosts().iter().filter(|h| h.is_master()).map(|h| h.ip).collect();
        let vip = cluster_vip(cluster)?;
        let config = KubeadmConfig::generate(&KubeadmInputs {
            master0_name: ctx.node_names[&ctx.master0.ip].clone(),
            master0_ip: ctx.master0.ip,
            master_ips: masters.clone(),
            vip,
            registry: registry.clone(),
            env: &cluster.env,
            image_config: (!image_config.trim().is_empty()).then_some(("etc/kubeadm.yml (image)", &*image_config)),
            clusterfile_documents: ("Clusterfile", &ctx.request.clusterfile.documents),
            nodes: NodeAdaptations::for_kernels(ctx.kernels.values().copied()),
        })?;
        let pki_dir = ctx.request.state_dir.join("pki");
        let validity = ctx.request.cert_validity;
        let dir = pki_dir.clone();
        let pki = tokio::task::spawn_blocking(move || ClusterPki::load_or_create(&dir, validity)).await??;
        // Names added by `kiln cert --alt-names` stay; `kiln cert` reissues with what is saved.
        let settings = PkiSettings {
            dns_domain: config.dns_domain(),
            service_cidrs: config.service_cidrs(),
            cert_sans: config.cert_sans(),
        }
        .with_alt_names(&pki_dir)?;
        settings.save(&pki_dir)?;
        let haproxy_image = ctx
            .request
            .image
            .label(apiserver_balancer::IMAGE_LABEL)
            .and_then(|name| name.parse::<crate::image::ImageRef>().ok())
            .map(|image| {
                let tag = image.tag().unwrap_or("latest");
                format!("{registry}/{}:{tag}", crate::registry::layout::repository_for(&image))
            });
        Ok(Self {
            config,
            pki,
            settings,
            vip,
            masters,
            init_config: format!("{}/.kiln/kubeadm-init.yaml", ctx.dir),
            haproxy_image,
        })
    }

    fn balancer_target(&self) -> BalancerTarget<'_> {
        BalancerTarget { vip: self.vip, masters: &self.masters, haproxy_image: self.haproxy_image.as_deref() }
    }

    /// A control-plane node's certificates and kubeconfigs; a joining master gets no
    /// kubelet.conf (kubeadm's TLS bootstrap makes it, and refuses to join over one).
    async fn upload_pki(&self, session: &Session, node: ControlPlaneNode, joining: bool) -> Result<(), KubeError> {
        let files = self.pki.control_plane_files(&node, &self.settings)?;
        for file in files.iter().filter(|f| !(joining && f.path == "kubelet.conf")) {
            session
                .upload(file.contents.expose().as_bytes(), &format!("/etc/kubernetes/{}", file.path), file.mode)
                .await?;
        }
        Ok(())
    }
}

/// Runs a kubeadm command; a failure carries its output, the kubelet's journal and a hint.
async fn kubeadm(session: &Session, command: &str) -> Result<String, KubeError> {
    match session.run(command).await {
        Ok(out) => Ok(out.stdout_text()),
        Err(SshError::Command { host, command, status, output }) => {
            let kubelet_log = session
                .exec("journalctl -u kubelet -n 15 --no-pager 2>&1 || true")
                .await
                .map(|o| o.stdout_text())
                .unwrap_or_default();
            let hint = kubeadm_hint(&format!("{output}\n{kubelet_log}"));
            Err(KubeError::Kubeadm(Box::new(KubeadmFailure { host, command, status, output, kubelet_log, hint })))
        }
        Err(e) => Err(e.into()),
    }
}

/// The `/etc/hosts` line naming the apiserver on a host.
fn hosts_entry(ip: IpAddr) -> String {
    format!(
        "sed -i '/{HOSTS_TAG}$/d' /etc/hosts && echo {} >> /etc/hosts",
        quote(&format!("{ip} {APISERVER_DOMAIN} {HOSTS_TAG}"))
    )
}

pub(super) async fn bring_up(ctx: &Context<'_>, reporter: &dyn RunReporter) -> Result<(), RunError> {
    let plan = Plan::make(ctx).await.map_err(|e| step_error("kube-prepare", ctx.master0.ip, e))?;
    let plan = &plan;

    // Masters name the apiserver master0 until they run one themselves; workers, the VIP.
    on_hosts(ctx, "kube-prepare", ctx.targets(), |host| async move {
        let session = ctx.session_for(host)?;
        let marker = format!("{}/.kiln/kubernetes", ctx.dir);
        // A worker whose balancer is a static pod joins through master0: the pod runs only
        // once the kubelet does; it names the VIP after its join.
        let balancer = (!host.is_master()).then(|| worker_balancer(ctx, host));
        let through_vip = balancer == Some(ApiserverBalancer::Ipvs);
        let apiserver = if through_vip { plan.vip } else { ctx.master0.ip };
        // The CNI configs already there are kept by delete; the cluster's CNI adds its own.
        let cni_before = quote(&format!("{}/.kiln/cni-before", ctx.dir));
        let command = format!(
            "if [ -f scripts/init-kube.sh ]; then bash scripts/init-kube.sh; \
             else echo 'the image has no scripts/init-kube.sh' >&2; exit 1; fi && \
             if [ ! -f {marker} ]; then ls -A /etc/cni/net.d 2>/dev/null > {cni_before} || true; fi && \
             touch {marker} && {hosts}",
            marker = quote(&marker),
            hosts = hosts_entry(apiserver)
        );
        ctx.script(reporter, host, &command).await?;
        if host.ip == ctx.master0.ip {
            pull_control_plane_images(ctx, plan, session).await?;
            reporter.step(&host.ip.to_string(), "control-plane images pulled");
        }
        if let Some(balancer) = balancer {
            let who = host.ip.to_string();
            session.run(&apiserver_balancer::install_script(balancer, &plan.balancer_target(), &who)?).await?;
            reporter.step(&who, &format!("kubelet installed, apiserver VIP served by {}", balancer.as_str()));
        } else {
            reporter.step(&host.ip.to_string(), "kubelet installed, apiserver name set");
        }
        Ok::<(), KubeError>(())
    })
    .await?;

    // Each node's images come down while the control plane comes up; best effort.
    let node_images = match NodeImages::find(ctx, &plan.config, plan.haproxy_image.as_deref()).await {
        Ok(images) => Some(images),
        Err(e) => {
            reporter
                .step(&ctx.master0.ip.to_string(), &format!("node images not listed ({e}); the kubelets pull them"));
            None
        }
    };
    let pulls = async {
        if let Some(images) = &node_images {
            images.pull(ctx, reporter, |host| worker_balancer(ctx, host) == ApiserverBalancer::Haproxy).await;
        }
    };
    let ((), brought_up) = tokio::join!(pulls, control_plane(ctx, plan, reporter));
    brought_up
}

/// `kube-init`, `kube-join` and `kube-nodes`.
async fn control_plane(ctx: &Context<'_>, plan: &Plan, reporter: &dyn RunReporter) -> Result<(), RunError> {
    on_hosts(ctx, "kube-init", [&ctx.master0], |host| async move {
        let session = ctx.session_for(host)?;
        // What a failed init left behind would fail kubeadm's preflight.
        session
            .run("if [ -f /etc/kubernetes/manifests/kube-apiserver.yaml ]; then kubeadm reset -f >/dev/null; fi")
            .await?;
        let node = ControlPlaneNode { name: ctx.node_names[&host.ip].clone(), ip: host.ip };
        plan.upload_pki(session, node, false).await?;
        session.upload(plan.config.init_yaml().as_bytes(), &plan.init_config, 0o600).await?;
        reporter.step(&host.ip.to_string(), "kubeadm init");
        kubeadm(session, &format!("kubeadm init --config {} -v 0", quote(&plan.init_config))).await?;
        session.run(&admin_kubeconfig_for_root(&ctx.dir)).await?;
        reporter.step(&host.ip.to_string(), "control plane initialised");
        Ok::<(), KubeError>(())
    })
    .await?;

    let masters: Vec<&Host> = ctx
        .targets()
        .iter()
        .filter(|h| h.is_master() && h.ip != ctx.master0.ip && !ctx.done("kube-join", &h.ip.to_string()))
        .collect();
    let workers: Vec<&Host> =
        ctx.targets().iter().filter(|h| !h.is_master() && !ctx.done("kube-join", &h.ip.to_string())).collect();
    if !masters.is_empty() || !workers.is_empty() {
        let join =
            join_data(ctx, plan, !masters.is_empty()).await.map_err(|e| step_error("kube-join", ctx.master0.ip, e))?;
        let join = &join;
        // One master at a time: etcd's quorum changes one member at a time.
        for master in masters {
            on_hosts(ctx, "kube-join", [master], |host| async move {
                join_host(ctx, plan, join, host, reporter).await?;
                // From now on this master answers for the apiserver name itself.
                ctx.session_for(host)?
                    .run(&format!("{} && {}", hosts_entry(host.ip), admin_kubeconfig_for_root(&ctx.dir)))
                    .await?;
                Ok::<(), KubeError>(())
            })
            .await?;
        }
        on_hosts(ctx, "kube-join", workers, |host| join_host(ctx, plan, join, host, reporter)).await?;
    }

    // Joining masters change the workers' virtual server: the existing workers get it again.
    if ctx.targets().iter().any(Host::is_master) {
        refresh_worker_vips(ctx, plan, reporter).await;
    }
    on_hosts(ctx, "kube-nodes", ctx.targets(), |host| async move {
        label_node(ctx, host).await?;
        reporter.step(&host.ip.to_string(), "node labelled and tainted");
        Ok::<(), SshError>(())
    })
    .await
}

/// The control plane's images on master0 before `kubeadm init`, from the in-cluster registry
/// (the joining masters pull theirs meanwhile, `node_images`).
async fn pull_control_plane_images(ctx: &Context<'_>, plan: &Plan, session: &Session) -> Result<(), KubeError> {
    // The init configuration names the images; it may hold bootstrap tokens: 0600, then gone.
    let path = format!("{}/.kiln/kubeadm-images.yaml", ctx.dir);
    session.upload(plan.config.init_yaml().as_bytes(), &path, 0o600).await?;
    let pulled = kubeadm(session, &format!("kubeadm config images pull --config {}", quote(&path))).await;
    session.run(&format!("rm -f {}", quote(&path))).await?;
    pulled.map(drop)
}

/// The apiserver virtual server on the workers this run does not act on, over every master
/// now. A worker that cannot be reached keeps its old list (still working through the
/// masters it has) and is reported.
async fn refresh_worker_vips(ctx: &Context<'_>, plan: &Plan, reporter: &dyn RunReporter) {
    let workers: Vec<Host> = ctx.others().filter(|h| !h.is_master()).cloned().collect();
    if workers.is_empty() {
        return;
    }
    let fleet = super::Fleet::connect(&workers, &ctx.request.connect).await;
    let target = plan.balancer_target();
    let refreshed: Vec<(IpAddr, Result<_, _>)> = futures_util::stream::iter(&fleet.sessions)
        .map(|(ip, session)| {
            let target = &target;
            async move { (*ip, apiserver_balancer::refresh(session, *ip, target).await) }
        })
        .buffer_unordered(ctx.request.connect.max_hosts.max(1))
        .collect()
        .await;
    for (ip, result) in refreshed {
        match result {
            Ok(_) => reporter.step(&ip.to_string(), "apiserver VIP balances over every master"),
            Err(e) => {
                reporter.step(&ip.to_string(), &format!("warning: its apiserver virtual server was not updated: {e}"))
            }
        }
    }
    for (ip, e) in &fleet.failed {
        reporter.step(
            &ip.to_string(),
            &format!(
                "warning: unreachable ({}); its apiserver virtual server still lists the old masters: \
                 `kiln apply` updates it when it is back",
                crate::error_chain(e)
            ),
        );
    }
    fleet.close().await;
}

/// A worker's apiserver balancer: IPVS where its kernel has it (preflight said which).
fn worker_balancer(ctx: &Context<'_>, host: &Host) -> ApiserverBalancer {
    ctx.kernels.get(&host.ip).map_or(ApiserverBalancer::Ipvs, ApiserverBalancer::for_kernel)
}

/// root's `~/.kube/config` on a master, unless root has one; recorded for delete.
fn admin_kubeconfig_for_root(dir: &str) -> String {
    format!(
        "if [ ! -e /root/.kube ]; then mkdir -p /root/.kube && echo /root/.kube >> {created}; fi; \
         if [ ! -e /root/.kube/config ]; then install -m 0600 {ADMIN_CONF} /root/.kube/config; fi",
        created = quote(&format!("{dir}/.kiln/created"))
    )
}

struct JoinData {
    endpoint: String,
    token: Secret,
    ca_cert_hash: String,
    certificate_key: Option<Secret>,
}

/// A fresh token (checked against kiln's CA) and, when masters join, a certificate key.
async fn join_data(ctx: &Context<'_>, plan: &Plan, for_masters: bool) -> Result<JoinData, KubeError> {
    let session = ctx.session_for(&ctx.master0)?;
    let host = ctx.master0.ip.to_string();
    let printed = kubeadm(session, "kubeadm token create --print-join-command --ttl 2h0m0s").await?;
    let command = JoinCommand::parse(&printed)
        .ok_or_else(|| KubeError::JoinCommand { host: host.clone(), lines: printed.lines().count() })?;
    let expected = plan.pki.ca_cert_hash();
    if command.ca_cert_hash != expected {
        return Err(KubeError::ForeignCa { host, found: command.ca_cert_hash, expected });
    }
    let certificate_key = if for_masters {
        let out = kubeadm(
            session,
            &format!("kubeadm init phase upload-certs --upload-certs --config {}", quote(&plan.init_config)),
        )
        .await?;
        let key = certificate_key(&out).ok_or(KubeError::CertificateKey { host })?;
        Some(Secret::new(key.to_owned()))
    } else {
        None
    };
    Ok(JoinData {
        endpoint: command.endpoint,
        token: Secret::new(command.token),
        ca_cert_hash: command.ca_cert_hash,
        certificate_key,
    })
}

async fn join_host(
    ctx: &Context<'_>,
    plan: &Plan,
    join: &JoinData,
    host: &Host,
    reporter: &dyn RunReporter,
) -> Result<(), KubeError> {
    let session = ctx.session_for(host)?;
    let name = ctx.node_names[&host.ip].clone();
    // A join that failed half-way leaves files kubeadm's preflight refuses.
    session.run("if [ -f /etc/kubernetes/kubelet.conf ]; then kubeadm reset -f >/dev/null; fi").await?;
    let static_pod_balancer = !host.is_master() && worker_balancer(ctx, host) == ApiserverBalancer::Haproxy;
    if static_pod_balancer {
        // A reset removed the pod's manifest; the join goes through master0 until the pod runs.
        let who = host.ip.to_string();
        let install = apiserver_balancer::install_script(ApiserverBalancer::Haproxy, &plan.balancer_target(), &who)?;
        session.run(&format!("{install}\n{}", hosts_entry(ctx.master0.ip))).await?;
    }
    let certificate_key = if host.is_master() {
        plan.upload_pki(session, ControlPlaneNode { name: name.clone(), ip: host.ip }, true).await?;
        join.certificate_key.as_ref().map(|k| k.expose().to_owned())
    } else {
        None
    };
    let spec = JoinSpec {
        node_name: name,
        node_ip: host.ip,
        api_server_endpoint: join.endpoint.clone(),
        token: join.token.expose().to_owned(),
        ca_cert_hash: join.ca_cert_hash.clone(),
        certificate_key,
    };
    let path = format!("{}/.kiln/kubeadm-join.yaml", ctx.dir);
    session.upload(plan.config.join_yaml(&spec).as_bytes(), &path, 0o600).await?;
    reporter.step(&host.ip.to_string(), if host.is_master() { "kubeadm join (control plane)" } else { "kubeadm join" });
    let result = kubeadm(session, &format!("kubeadm join --config {} -v 0", quote(&path))).await;
    // The file holds a token: never left behind.
    session.run(&format!("rm -f {}", quote(&path))).await?;
    result?;
    if static_pod_balancer {
        session.run(&hosts_entry(plan.vip)).await?;
    }
    reporter.step(&host.ip.to_string(), "joined");
    Ok(())
}

/// How long a joined host's kubelet may take to register its Node.
const NODE_REGISTER_SECS: u32 = 180;

/// `node-role.kubernetes.io/<role>` for each role, `hosts[].labels` and `hosts[].taints`, set
/// through master0 on `host`'s node.
async fn label_node(ctx: &Context<'_>, host: &Host) -> Result<(), SshError> {
    let name = quote(&ctx.node_names[&host.ip]);
    let mut labels: Vec<String> = host.roles.iter().map(|r| format!("node-role.kubernetes.io/{r}=")).collect();
    labels.extend(host.labels.iter().map(|(k, v)| format!("{k}={v}")));
    let labels: Vec<String> = labels.iter().map(|l| quote(l)).collect();
    // A joined kubelet registers its Node only once it reaches an apiserver: a worker balanced
    // by a haproxy static pod does so after that pod serves the VIP, seconds after the join.
    let mut script = format!(
        "set -e\n\
         if ! kubectl --kubeconfig {ADMIN_CONF} wait --for=create node/{name} --timeout={NODE_REGISTER_SECS}s >/dev/null; then\n\
         echo \"node {name} did not register within {NODE_REGISTER_SECS} s: see journalctl -u kubelet on that host\" >&2; exit 1\nfi\n\
         kubectl --kubeconfig {ADMIN_CONF} label node {name} {} --overwrite >/dev/null\n",
        labels.join(" ")
    );
    if !host.taints.is_empty() {
        let taints: Vec<String> = host.taints.iter().map(|t| quote(&t.to_string())).collect();
        script.push_str(&format!(
            "kubectl --kubeconfig {ADMIN_CONF} taint node {name} {} --overwrite >/dev/null\n",
            taints.join(" ")
        ));
    }
    ctx.session_for(&ctx.master0)?.run(&script).await?;
    Ok(())
}

/// A node as `kubectl get nodes -o json` lists it: its name and Ready condition.
#[derive(Debug, serde::Deserialize)]
struct NodeList {
    items: Vec<Node>,
}

#[derive(Debug, serde::Deserialize)]
struct Node {
    metadata: NodeMeta,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Debug, serde::Deserialize)]
struct NodeMeta {
    name: String,
}

#[derive(Debug, Default, serde::Deserialize)]
struct NodeStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Debug, serde::Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(default)]
    message: String,
}

/// For each expected node, `None` when Ready, else why not.
pub fn readiness(node_list_json: &str, expected: &[&str]) -> Result<BTreeMap<String, Option<String>>, String> {
    let list: NodeList = serde_json::from_str(node_list_json).map_err(|e| e.to_string())?;
    Ok(expected
        .iter()
        .map(|name| {
            let state = match list.items.iter().find(|n| n.metadata.name == *name) {
                None => Some("not registered".to_owned()),
                Some(node) => match node.status.conditions.iter().find(|c| c.kind == "Ready") {
                    Some(c) if c.status == "True" => None,
                    Some(c) => Some(format!("NotReady: {}", c.message)),
                    None => Some("no Ready condition yet".to_owned()),
                },
            };
            ((*name).to_owned(), state)
        })
        .collect())
}

/// Waits until every host's node is Ready; on timeout, reports each one that is not.
pub(super) async fn wait_ready(ctx: &Context<'_>, reporter: &dyn RunReporter) -> Result<(), RunError> {
    reporter.phase("nodes-ready", "wait until every node is Ready");
    let pending: Vec<&Host> = ctx.targets().iter().filter(|h| !ctx.done("nodes-ready", &h.ip.to_string())).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let result = poll_ready(ctx, &pending, reporter).await;
    let error = result.as_ref().err().map(|e| crate::error_chain(e));
    for host in &pending {
        ctx.record("nodes-ready", &host.ip.to_string(), error.as_deref().map_or(Ok(()), Err))?;
    }
    result.map_err(|e| step_error("nodes-ready", ctx.master0.ip, e))
}

async fn poll_ready(ctx: &Context<'_>, hosts: &[&Host], reporter: &dyn RunReporter) -> Result<(), KubeError> {
    let session = ctx.session_for(&ctx.master0)?;
    let host = ctx.master0.ip.to_string();
    let expected: Vec<&str> = hosts.iter().map(|h| ctx.node_names[&h.ip].as_str()).collect();
    let timeout = ctx.request.ready_timeout;
    let started = Instant::now();
    loop {
        let out = session.run(&format!("kubectl --kubeconfig {ADMIN_CONF} get nodes -o json")).await?;
        let states = readiness(&out.stdout_text(), &expected)
            .map_err(|reason| KubeError::NodeList { host: host.clone(), reason })?;
        let waiting: Vec<(&String, &String)> = states.iter().filter_map(|(n, s)| s.as_ref().map(|s| (n, s))).collect();
        if waiting.is_empty() {
            reporter.step(&host, &format!("all {} nodes Ready", expected.len()));
            return Ok(());
        }
        if started.elapsed() >= timeout {
            let report = waiting.iter().map(|(n, s)| format!("  {n}: {s}")).collect::<Vec<_>>().join("\n");
            return Err(KubeError::NotReady {
                seconds: timeout.as_secs(),
                not_ready: waiting.len(),
                total: expected.len(),
                report,
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_command_is_parsed_and_checked() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let out = format!(
            "W0101 warning\nkubeadm join apiserver.cluster.local:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {hash} \n"
        );
        let parsed = JoinCommand::parse(&out).unwrap();
        assert_eq!(parsed.endpoint, "apiserver.cluster.local:6443");
        assert_eq!(parsed.token, "abcdef.0123456789abcdef");
        assert_eq!(parsed.ca_cert_hash, hash);
        for bad in [
            out.replace("abcdef.0123456789abcdef", "ABCDEF.0123456789abcdef"),
            out.replace("abcdef.0123456789abcdef", "abcdef0123456789abcdef"),
            out.replace(&hash, "sha256:xyz"),
            "kubeadm join x:6443 --token abcdef.0123456789abcdef".to_owned(),
            String::new(),
        ] {
            assert_eq!(JoinCommand::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn certificate_key_is_the_last_line_in_hex() {
        let key = "0f".repeat(32);
        let out = format!("[upload-certs] Storing the certificates\n[upload-certs] Using certificate key:\n{key}\n\n");
        assert_eq!(certificate_key(&out), Some(key.as_str()));
        assert_eq!(certificate_key("[upload-certs] Skipping phase\n"), None);
        assert_eq!(certificate_key(&format!("{key}\ntrailing words")), None);
    }

    #[test]
    fn hints_name_the_common_causes() {
        assert!(kubeadm_hint("[ERROR Port-6443]: Port 6443 is in use").unwrap().contains("port"));
        assert!(
            kubeadm_hint("misconfiguration: kubelet cgroup driver: \"cgroupfs\" is different")
                .unwrap()
                .contains("CgroupDriver")
        );
        assert!(
            kubeadm_hint("Failed to pull image \"sea.hub:5000/pause:3.9\": ErrImagePull").unwrap().contains("registry")
        );
        assert_eq!(kubeadm_hint("something else entirely"), None);
    }

    #[test]
    fn readiness_reports_each_node() {
        let json = r#"{"items":[
            {"metadata":{"name":"a"},"status":{"conditions":[{"type":"Ready","status":"True","message":"ok"}]}},
            {"metadata":{"name":"b"},"status":{"conditions":[{"type":"Ready","status":"False","message":"cni plugin not initialized"}]}},
            {"metadata":{"name":"c"}}]}"#;
        let states = readiness(json, &["a", "b", "c", "d"]).unwrap();
        assert_eq!(states["a"], None);
        assert_eq!(states["b"].as_deref(), Some("NotReady: cni plugin not initialized"));
        assert_eq!(states["c"].as_deref(), Some("no Ready condition yet"));
        assert_eq!(states["d"].as_deref(), Some("not registered"));
        assert!(readiness("not json", &["a"]).is_err());
    }

    #[test]
    fn host_scripts_are_valid_shell() {
        let vip = DEFAULT_VIP;
        let reset = reset_script("/var/lib/kiln/data/my cluster", vip);
        for script in [&reset, &hosts_entry(vip), &admin_kubeconfig_for_root("/d")] {
            let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(script).output().unwrap();
            assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(reset.contains("ipvsadm -D -t 10.103.97.2:6443") && reset.contains("kiln-apiserver-lb.yaml"));
        assert!(reset.contains("'/var/lib/kiln/data/my cluster/.kiln/kubernetes'"));
        assert!(reset.contains("/# kiln-apiserver$/d"));
        assert!(reset.contains("kube-proxy --cleanup"), "kube-proxy's netfilter rules go too");
        assert!(reset.find("rmp -f").expect("leftover pods") < reset.find("kube-proxy --cleanup").expect("proxy"));
    }
}

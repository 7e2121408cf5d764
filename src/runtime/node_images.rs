//! The images each node runs once it has joined, pulled on every host while the control plane
//! comes up: on joining masters all of kubeadm's (master0 pulled them before `kubeadm init`),
//! on workers kubeadm's pause and kube-proxy images and the apiserver balancer's haproxy (where
//! a static pod serves the VIP), and everywhere the images of the DaemonSets in the launched
//! Kubernetes apps (the CNI above all). A node then turns Ready as soon as its CNI
//! pod is scheduled instead of pulling only then, one registry round after another.
//!
//! Best effort: a pull that fails is reported and the kubelet pulls the image itself later, as
//! it would have anyway. Helm charts are templates and are not read.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures_util::StreamExt;

use super::run::{Context, Launched, RunReporter};
use crate::build::collect::{Node, images_in, parse_yaml};
use crate::clusterfile::Host;
use crate::image::{AppType, ImageRef};
use crate::kubernetes::kubeadm_config::{CRI_SOCKET, KubeadmConfig};
use crate::ssh::{SshError, quote};

/// kubeadm's images that a worker runs (a master pulls all of kubeadm's before it joins).
const WORKER_KUBEADM_IMAGES: &[&str] = &["pause", "kube-proxy"];

/// What each target host pulls.
#[derive(Debug)]
pub(super) struct NodeImages {
    /// Pulled on every target host.
    everywhere: Vec<String>,
    /// Pulled on masters that join as well: all of kubeadm's.
    on_joining_masters: Vec<String>,
    /// Pulled on workers as well.
    on_workers: Vec<String>,
    /// Pulled on workers whose apiserver VIP a haproxy static pod serves.
    haproxy: Option<String>,
}

impl NodeImages {
    /// Works the lists out on master0 (kubeadm is installed there by now).
    pub(super) async fn find(
        ctx: &Context<'_>,
        config: &KubeadmConfig,
        haproxy_image: Option<&str>,
    ) -> Result<Self, SshError> {
        let session = ctx.session_for(&ctx.master0)?;
        // The ClusterConfiguration alone: it holds no token.
        let path = format!("{}/.kiln/kubeadm-cluster.yaml", ctx.dir);
        session.upload(config.cluster_yaml().as_bytes(), &path, 0o600).await?;
        let listed = session.run(&format!("kubeadm config images list --config {}", quote(&path))).await?;
        let on_joining_masters: Vec<String> =
            listed.stdout_text().lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        let on_workers = worker_kubeadm_images(&on_joining_masters);
        let mut everywhere = BTreeSet::new();
        for manifest in app_manifests(ctx).await? {
            // A manifest kiln cannot read is the apps phase's to report; here it pulls nothing.
            everywhere.extend(daemonset_images(&manifest).unwrap_or_default());
        }
        let everywhere = everywhere.into_iter().filter(|i| is_mirrored(i)).collect();
        Ok(Self { everywhere, on_joining_masters, on_workers, haproxy: haproxy_image.map(str::to_owned) })
    }

    fn for_host(&self, host: &Host, master0: IpAddr, with_haproxy: bool) -> Vec<&str> {
        let extra = match (host.is_master(), host.ip == master0) {
            (true, true) => &[][..],
            (true, false) => &self.on_joining_masters[..],
            (false, _) => &self.on_workers[..],
        };
        let haproxy = self.haproxy.iter().filter(|_| with_haproxy && !host.is_master());
        self.everywhere.iter().chain(extra).chain(haproxy).map(String::as_str).collect()
    }

    /// Pulls on every target host at once; failures become steps, never errors.
    pub(super) async fn pull(
        &self,
        ctx: &Context<'_>,
        reporter: &dyn RunReporter,
        serves_vip_with_haproxy: impl Fn(&Host) -> bool,
    ) {
        let serves_vip_with_haproxy = &serves_vip_with_haproxy;
        let pulls = ctx.targets().iter().map(|host| async move {
            let images = self.for_host(host, ctx.master0.ip, serves_vip_with_haproxy(host));
            if images.is_empty() {
                return;
            }
            let who = host.ip.to_string();
            let outcome = match ctx.session_for(host) {
                Ok(session) => session.run(&pull_script(&images)).await.map(|o| o.stdout_text()),
                Err(e) => Err(e),
            };
            let message = match outcome {
                Ok(out) if out.trim() == NO_CRICTL => "no crictl: the kubelet pulls its images itself".to_owned(),
                Ok(out) => {
                    let failed: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix(FAILED)).collect();
                    if failed.is_empty() {
                        let count = images.len();
                        format!("{count} node image{} pulled", if count == 1 { "" } else { "s" })
                    } else {
                        format!(
                            "could not pull {} (the kubelet pulls when it starts the pod): {}",
                            failed.len(),
                            failed.join(", ")
                        )
                    }
                }
                Err(e) => format!("node images not pulled ({e}); the kubelet pulls them itself"),
            };
            reporter.step(&who, &message);
        });
        futures_util::stream::iter(pulls).buffer_unordered(ctx.request.connect.max_hosts).collect::<()>().await;
    }
}

const NO_CRICTL: &str = "kiln: no crictl";
const FAILED: &str = "kiln: failed ";

/// Pulls `images` through the CRI (so containerd's registry mirrors apply), all at once.
fn pull_script(images: &[&str]) -> String {
    let pulls: String = images.iter().map(|i| format!("pull {} &\n", quote(i))).collect();
    format!(
        "command -v crictl >/dev/null 2>&1 || {{ echo '{NO_CRICTL}'; exit 0; }}\n\
         pull() {{ crictl --runtime-endpoint {CRI_SOCKET} --timeout 5m pull \"$1\" >/dev/null 2>&1 || echo \"{FAILED}$1\"; }}\n\
         {pulls}wait\n"
    )
}

/// pause and kube-proxy out of `kubeadm config images list`.
fn worker_kubeadm_images(listed: &[String]) -> Vec<String> {
    listed
        .iter()
        .filter(|line| {
            line.parse::<ImageRef>().is_ok_and(|image| {
                let name = image.repository().rsplit('/').next().unwrap_or_default();
                WORKER_KUBEADM_IMAGES.contains(&name)
            })
        })
        .cloned()
        .collect()
}

/// Images the in-cluster registry answers for (a pull of anything else would go out to a
/// network the hosts do not have).
fn is_mirrored(image: &str) -> bool {
    image.parse::<ImageRef>().is_ok_and(|i| super::run::MIRRORED_UPSTREAMS.contains(&i.registry()))
}

/// The files of the Kubernetes apps the run launches, as master0 holds them (a directory
/// stands for its YAML and JSON files).
async fn app_manifests(ctx: &Context<'_>) -> Result<Vec<String>, SshError> {
    let Some(ext) = ctx.platforms.get(&ctx.master0.ip).and_then(|p| p.extension().ok().flatten()) else {
        return Ok(Vec::new());
    };
    let launch = Launched::of(&ext, ctx.request.clusterfile);
    let paths: Vec<String> = launch
        .app_names()
        .unwrap_or_default()
        .iter()
        .filter_map(|name| ext.app(name))
        .filter(|app| app.app_type == AppType::Kube && app.cmds.is_empty())
        .flat_map(|app| app.files.iter().map(move |f| format!("{}{}", app.dir(), f.trim_start_matches('/'))))
        .collect();
    let session = ctx.session_for(&ctx.master0)?;
    let mut manifests = Vec::new();
    for path in paths {
        let script = format!(
            "cd {} && p={} && if [ -d \"$p\" ]; then \
             find \"$p\" -type f \\( -name '*.yaml' -o -name '*.yml' -o -name '*.json' \\) | sort | \
             while read -r f; do cat \"$f\"; printf '\\n---\\n'; done; \
             elif [ -f \"$p\" ]; then cat \"$p\"; fi",
            quote(&ctx.rootfs),
            quote(&path)
        );
        manifests.push(session.run(&script).await?.stdout_text());
    }
    Ok(manifests)
}

/// The images of every DaemonSet in a manifest (`kind: List` items too), in order, once each.
fn daemonset_images(manifest: &str) -> Result<Vec<String>, String> {
    let mut images = Vec::new();
    for document in parse_yaml(manifest)? {
        collect_daemonsets(&document, &mut images);
    }
    let mut seen = BTreeSet::new();
    images.retain(|i| seen.insert(i.clone()));
    Ok(images)
}

fn collect_daemonsets(node: &Node, images: &mut Vec<String>) {
    let Node::Map(fields) = node else { return };
    let field = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    match field("kind") {
        Some(Node::Str(kind)) if kind == "DaemonSet" => images_in(node, images),
        // `List`, and typed lists such as `DaemonSetList`.
        Some(Node::Str(kind)) if kind.ends_with("List") => {
            if let Some(Node::Seq(items)) = field("items") {
                items.iter().for_each(|item| collect_daemonsets(item, images));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: kube-flannel}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: kube-flannel-ds}
spec:
  template:
    spec:
      initContainers:
      - name: install-cni-plugin
        image: ghcr.io/flannel-io/flannel-cni-plugin:v1.7.1-flannel1
      - name: install-cni
        image: ghcr.io/flannel-io/flannel:v0.27.0
      containers:
      - name: kube-flannel
        image: ghcr.io/flannel-io/flannel:v0.27.0
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {template: {spec: {containers: [{name: web, image: nginx:1.27}]}}}
---
apiVersion: v1
kind: List
items:
- {apiVersion: apps/v1, kind: DaemonSet, spec: {template: {spec: {containers: [{name: a, image: 'quay.io/a/agent:1'}]}}}}
";

    #[test]
    fn daemonset_images_are_found_once_each_and_nothing_else() {
        assert_eq!(
            daemonset_images(FLANNEL).unwrap(),
            [
                "ghcr.io/flannel-io/flannel-cni-plugin:v1.7.1-flannel1",
                "ghcr.io/flannel-io/flannel:v0.27.0",
                "quay.io/a/agent:1"
            ]
        );
        assert!(daemonset_images("kind: [unclosed").is_err());
    }

    #[test]
    fn workers_pull_pause_and_kube_proxy_of_kubeadm_list() {
        let listed = [
            "sea.hub:5000/kube-apiserver:v1.37.2",
            "sea.hub:5000/kube-proxy:v1.37.2",
            "sea.hub:5000/coredns/coredns:v1.12.4",
            "sea.hub:5000/pause:3.10.1",
            "sea.hub:5000/etcd:3.6.5-0",
        ]
        .map(String::from);
        assert_eq!(worker_kubeadm_images(&listed), ["sea.hub:5000/kube-proxy:v1.37.2", "sea.hub:5000/pause:3.10.1"]);
    }

    #[test]
    fn only_mirrored_registries_are_pulled_ahead() {
        assert!(is_mirrored("nginx:1.27"));
        assert!(is_mirrored("ghcr.io/flannel-io/flannel:v0.27.0"));
        assert!(!is_mirrored("registry.example.com/app:1"));
        assert!(!is_mirrored("not an image"));
    }

    #[test]
    fn each_role_pulls_what_its_node_runs() {
        let flannel = "ghcr.io/flannel-io/flannel:v0.27.0";
        let images = NodeImages {
            everywhere: vec![flannel.into()],
            on_joining_masters: vec!["sea.hub:5000/etcd:3.6.5-0".into(), "sea.hub:5000/pause:3.10.1".into()],
            on_workers: vec!["sea.hub:5000/pause:3.10.1".into()],
            haproxy: Some("sea.hub:5000/kiln.local/haproxy:2.6.12".into()),
        };
        let hosts = crate::clusterfile::Clusterfile::parse(
            "C",
            "kind: Cluster\nspec:\n  hosts:\n  - {ips: [10.0.0.1, 10.0.0.3], roles: [master]}\n  \
             - {ips: [10.0.0.2], roles: [node]}\n",
        )
        .unwrap()
        .cluster
        .hosts;
        let master0 = hosts[0].ip;
        assert_eq!(images.for_host(&hosts[0], master0, true), [flannel], "master0 pulled kubeadm's before init");
        assert_eq!(
            images.for_host(&hosts[1], master0, true),
            [flannel, "sea.hub:5000/etcd:3.6.5-0", "sea.hub:5000/pause:3.10.1"]
        );
        assert_eq!(images.for_host(&hosts[2], master0, false), [flannel, "sea.hub:5000/pause:3.10.1"]);
        assert_eq!(
            images.for_host(&hosts[2], master0, true),
            [flannel, "sea.hub:5000/pause:3.10.1", "sea.hub:5000/kiln.local/haproxy:2.6.12"]
        );
    }

    #[test]
    fn the_pull_script_is_valid_shell_and_quotes_each_image() {
        let script = pull_script(&["a:1", "b'c:2"]);
        assert!(
            script.contains(
                r"pull a:1 &
pull 'b'\''c:2' &
wait"
            ),
            "{script}"
        );
        let status = std::process::Command::new("bash").args(["-n", "-c", &script]).status().unwrap();
        assert!(status.success());
    }
}

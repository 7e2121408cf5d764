//! How a worker reaches the masters' apiservers. `apiserver.cluster.local` names a VIP on a
//! local dummy link (the loopback where the kernel has none), served by one of two balancers
//! (preflight picks per worker and says which):
//!
//! - a kernel IPVS virtual server over every master (Sealer's lvscare design);
//! - where the kernel has no IPVS, a haproxy static pod bound to the VIP that checks each
//!   apiserver's `/readyz` (KubeKey's and kubespray's design). Its image is the cluster image's
//!   `kiln.io/apiserver-balancer-image`, pulled from the in-cluster registry.
//!
//! A unit restores the VIP (and the IPVS rules) at boot; the kubelet restarts haproxy, and a
//! new master list changes the manifest's config hash, so the kubelet replaces the pod. The VIP
//! refuses connections until the new haproxy binds it, so [`refresh`] waits for it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::static_pod::{self, Restart, StaticPodError};
use crate::kubernetes::node_kernel::ApiserverBalancer;
use crate::kubernetes::pki::APISERVER_PORT;
use crate::ssh::Session;

/// The cluster image label naming the haproxy image (`kiln.local/haproxy:<tag>`).
pub const IMAGE_LABEL: &str = "kiln.io/apiserver-balancer-image";
/// The dummy interface holding the VIP (as kube-proxy's kube-ipvs0 holds service addresses).
const VIP_LINK: &str = "kiln-vip0";
/// The unit and script that restore the VIP (and the IPVS rules) at boot.
const VIP_UNIT: &str = "kiln-apiserver-vip.service";
const VIP_SCRIPT: &str = "/etc/kiln/apiserver-vip.sh";
const HAPROXY_DIR: &str = "/etc/kiln/apiserver-lb";
/// The static pod (and its one container, named like it, as kubeadm names its pods').
const HAPROXY_POD: &str = "kiln-apiserver-lb";
const HAPROXY_MANIFEST: &str = "/etc/kubernetes/manifests/kiln-apiserver-lb.yaml";
/// What the refresh script prints when it changed haproxy's configuration.
const CHANGED: &str = "kiln: apiserver balancer changed";
/// How long the kubelet may take to replace haproxy's pod (it notices a manifest change
/// within its file-check period, 20 s, then pulls nothing: the image is there).
const REPLACE_TIMEOUT: Duration = Duration::from_secs(120);
/// haproxy's own liveness answer, on the worker's loopback.
const HAPROXY_HEALTH_PORT: u16 = 6444;

/// What a worker's balancer serves.
#[derive(Debug, Clone)]
pub struct BalancerTarget<'a> {
    pub vip: IpAddr,
    pub masters: &'a [IpAddr],
    /// The haproxy image as workers pull it (`<registry>/kiln.local/haproxy:<tag>`), if the
    /// cluster image has one.
    pub haproxy_image: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{host} has no IPVS in its kernel and the cluster image names no apiserver balancer image \
     (label `{IMAGE_LABEL}`): build the image from kubefiles/kubernetes, or load IPVS on {host}"
)]
pub struct NoBalancerImage {
    pub host: String,
}

/// The script that sets `balancer` up on a worker (idempotent).
pub fn install_script(
    balancer: ApiserverBalancer,
    target: &BalancerTarget<'_>,
    host: &str,
) -> Result<String, NoBalancerImage> {
    match balancer {
        ApiserverBalancer::Ipvs => Ok(ipvs_script(target)),
        ApiserverBalancer::Haproxy => {
            let image = target.haproxy_image.ok_or_else(|| NoBalancerImage { host: host.to_owned() })?;
            Ok(haproxy_script(target, image))
        }
    }
}

/// Updates a worker this run may not have set up to the master list (whichever balancer it
/// has) and, when that replaces its haproxy, waits until the new one runs.
pub async fn refresh(session: &Session, host: IpAddr, target: &BalancerTarget<'_>) -> Result<(), StaticPodError> {
    let replaced = static_pod::running_container(session, HAPROXY_POD).await?;
    let out = session.run(&refresh_script(target)).await?;
    if out.stdout_text().lines().any(|line| line == CHANGED) {
        let restart = Restart { pod: HAPROXY_POD.to_owned(), replaced };
        static_pod::wait_replaced(session, host, &restart, REPLACE_TIMEOUT).await?;
    }
    Ok(())
}

/// The script behind [`refresh`] (haproxy's image stays what its manifest names); prints
/// [`CHANGED`] when the kubelet will replace haproxy.
fn refresh_script(target: &BalancerTarget<'_>) -> String {
    let config = haproxy_config(target);
    let hash = config_hash(&config);
    let files = format!(
        "cat > {HAPROXY_DIR}/haproxy.cfg <<'KILN_EOF'\n{config}KILN_EOF\n\
         if ! grep -q 'kiln.io/config-hash: \"{hash}\"' {HAPROXY_MANIFEST}; then\n\
         sed -i 's/kiln.io\\/config-hash: .*/kiln.io\\/config-hash: \"{hash}\"/' {HAPROXY_MANIFEST}\n\
         echo '{CHANGED}'\nfi\n",
    );
    format!(
        "if [ -f {HAPROXY_MANIFEST} ]; then\n{}else\n{}fi\n",
        vip_unit_script(target.vip, VipPlacement::Address, "", &files),
        ipvs_script(target)
    )
}

/// Removes either balancer and the VIP (part of the Kubernetes reset of a host).
pub fn remove_script(vip: IpAddr) -> String {
    let service = SocketAddr::new(vip, APISERVER_PORT);
    format!(
        "if command -v ipvsadm >/dev/null 2>&1; then ipvsadm -D -t {service} 2>/dev/null || true; fi\n\
         systemctl disable --now {VIP_UNIT} >/dev/null 2>&1 || true\n\
         rm -f /etc/systemd/system/{VIP_UNIT} {VIP_SCRIPT} {HAPROXY_MANIFEST}; rm -rf {HAPROXY_DIR}\n\
         rmdir /etc/kiln 2>/dev/null || true\n\
         ip link del {VIP_LINK} 2>/dev/null || true\n\
         ip addr del {vip}/{prefix} dev lo 2>/dev/null || true\n\
         ip route del {vip}/{prefix} dev lo 2>/dev/null || true\n",
        prefix = host_prefix(vip),
    )
}

fn ipvs_script(target: &BalancerTarget<'_>) -> String {
    let service = SocketAddr::new(target.vip, APISERVER_PORT);
    let mut rules = format!("ipvsadm -D -t {service} 2>/dev/null || true\nipvsadm -A -t {service} -s rr\n");
    for m in target.masters {
        rules.push_str(&format!("ipvsadm -a -t {service} -r {} -m\n", SocketAddr::new(*m, APISERVER_PORT)));
    }
    // The kernel's IPVS takes a local client's packets on their way out (LOCAL_OUT): the VIP
    // needs only a route, whose source is this host's own address toward the masters. Were the
    // VIP a local address, connections would leave from the VIP itself and the masters' answers
    // would never come back (kube-proxy's IPVS mode masquerades for that; kiln's IPVS VIP runs
    // beside any kube-proxy mode). Measured on an arm64 VM: no connection through an addressed
    // VIP, every one through the route.
    let placement = match target.masters.first() {
        Some(master) => VipPlacement::Route { toward: *master },
        None => VipPlacement::Address,
    };
    vip_unit_script(target.vip, placement, &rules, "")
}

fn haproxy_script(target: &BalancerTarget<'_>, image: &str) -> String {
    let config = haproxy_config(target);
    let manifest = haproxy_manifest(image, &config_hash(&config));
    let files = format!(
        "mkdir -p {HAPROXY_DIR} /etc/kubernetes/manifests\n\
         cat > {HAPROXY_DIR}/haproxy.cfg <<'KILN_EOF'\n{config}KILN_EOF\n\
         cat > {HAPROXY_MANIFEST}.tmp <<'KILN_EOF'\n{manifest}KILN_EOF\n\
         mv {HAPROXY_MANIFEST}.tmp {HAPROXY_MANIFEST}\n"
    );
    vip_unit_script(target.vip, VipPlacement::Address, "", &files)
}

/// How a worker holds the VIP on its link.
#[derive(Debug, Clone, Copy)]
enum VipPlacement {
    /// A local address: haproxy binds it.
    Address,
    /// A route with this host's source address toward `toward` (a master): IPVS.
    Route { toward: IpAddr },
}

/// The VIP link and `rules`, restored at boot by a unit; `files` written first.
fn vip_unit_script(vip: IpAddr, placement: VipPlacement, rules: &str, files: &str) -> String {
    let prefix = host_prefix(vip);
    // A kernel without dummy links (CONFIG_DUMMY off and no module) gets the VIP on the
    // loopback: only this host answers it either way.
    let hold = match placement {
        VipPlacement::Address => format!("ip addr replace {vip}/{prefix} dev \"$dev\""),
        VipPlacement::Route { toward } => format!(
            "src=$(ip route get {toward} | sed -n 's/.* src \\([^ ]*\\).*/\\1/p'); \
             ip addr del {vip}/{prefix} dev \"$dev\" 2>/dev/null || true; \
             ip route replace {vip}/{prefix} dev \"$dev\" src \"$src\""
        ),
    };
    let link = format!(
        "if ip link show {VIP_LINK} >/dev/null 2>&1 || ip link add {VIP_LINK} type dummy 2>/dev/null; then \
         dev={VIP_LINK}; ip link set {VIP_LINK} up; else dev=lo; fi\n{hold}\n"
    );
    let restore = format!("#!/bin/sh\n# Written by kiln: the apiserver VIP on this worker.\nset -e\n{link}{rules}");
    let unit = format!(
        "[Unit]\nDescription=apiserver VIP (kiln)\nAfter=network-online.target\nBefore=kubelet.service\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh {VIP_SCRIPT}\n\
         [Install]\nWantedBy=multi-user.target\n"
    );
    format!(
        "set -e\nmkdir -p /etc/kiln\n{files}cat > {VIP_SCRIPT} <<'KILN_EOF'\n{restore}KILN_EOF\n\
         cat > /etc/systemd/system/{VIP_UNIT} <<'KILN_EOF'\n{unit}KILN_EOF\n\
         systemctl daemon-reload\nsystemctl enable {VIP_UNIT} >/dev/null 2>&1\nsh {VIP_SCRIPT}\n"
    )
}

/// The prefix length of a single address.
fn host_prefix(vip: IpAddr) -> u8 {
    if vip.is_ipv4() { 32 } else { 128 }
}

/// What the manifest carries so the kubelet replaces the pod when the config changes.
fn config_hash(config: &str) -> String {
    hex::encode(&Sha256::digest(config.as_bytes())[..8])
}

fn haproxy_config(target: &BalancerTarget<'_>) -> String {
    let servers: String = target
        .masters
        .iter()
        .enumerate()
        .map(|(i, m)| format!("  server master{i} {}\n", SocketAddr::new(*m, APISERVER_PORT)))
        .collect();
    format!(
        "# Written by kiln: this worker's way to the apiservers ({vip} → every ready master).\n\
         global\n  maxconn 4000\n  log stdout format raw local0 warning\n\
         defaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
         \x20 timeout check 3s\n\
         frontend apiserver\n  bind {bind}\n  default_backend masters\n\
         frontend health\n  mode http\n  bind 127.0.0.1:{HAPROXY_HEALTH_PORT}\n  monitor-uri /healthz\n\
         backend masters\n  option httpchk GET /readyz\n  http-check expect status 200\n\
         \x20 default-server inter 2s fall 2 rise 2 check check-ssl verify none\n{servers}",
        vip = target.vip,
        bind = SocketAddr::new(target.vip, APISERVER_PORT),
    )
}

fn haproxy_manifest(image: &str, config_hash: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kiln-apiserver-lb\n  namespace: kube-system\n\
         \x20 labels:\n    k8s-app: kiln-apiserver-lb\n\
         \x20 annotations:\n    kiln.io/config-hash: \"{config_hash}\"\n\
         spec:\n  hostNetwork: true\n  priorityClassName: system-node-critical\n\
         \x20 containers:\n  - name: {HAPROXY_POD}\n    image: {image}\n\
         \x20   command: [/usr/sbin/haproxy, -W, -db, -f, /etc/haproxy/haproxy.cfg]\n\
         \x20   livenessProbe:\n      httpGet: {{host: 127.0.0.1, path: /healthz, port: {HAPROXY_HEALTH_PORT}}}\n\
         \x20   resources:\n      requests: {{cpu: 25m, memory: 32Mi}}\n\
         \x20   volumeMounts:\n    - {{name: config, mountPath: /etc/haproxy, readOnly: true}}\n\
         \x20 volumes:\n  - name: config\n    hostPath: {{path: {HAPROXY_DIR}, type: Directory}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn scripts_are_valid_shell_and_serve_every_master() {
        let masters = [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")];
        let target = BalancerTarget {
            vip: ip("10.103.97.2"),
            masters: &masters,
            haproxy_image: Some("sea.hub:5000/kiln.local/haproxy:2.6"),
        };
        let ipvs = install_script(ApiserverBalancer::Ipvs, &target, "w").expect("ipvs");
        let haproxy = install_script(ApiserverBalancer::Haproxy, &target, "w").expect("haproxy");
        for script in [&ipvs, &haproxy, &refresh_script(&target), &remove_script(target.vip)] {
            let status = std::process::Command::new("sh").args(["-n", "-c", script]).status().expect("sh");
            assert!(status.success(), "{script}");
        }
        for m in &masters {
            assert!(ipvs.contains(&format!("ipvsadm -a -t 10.103.97.2:6443 -r {m}:6443 -m")), "{ipvs}");
            assert!(haproxy.contains(&format!("{m}:6443\n")), "{haproxy}");
        }
        assert!(haproxy.contains("bind 10.103.97.2:6443") && haproxy.contains("option httpchk GET /readyz"));
        assert!(haproxy.contains("image: sea.hub:5000/kiln.local/haproxy:2.6"), "{haproxy}");
        assert!(!haproxy.contains("ipvsadm"));
        // haproxy binds the VIP; IPVS needs a route from this host's own address toward a master.
        assert!(haproxy.contains("ip addr replace 10.103.97.2/32 dev \"$dev\""), "{haproxy}");
        assert!(
            ipvs.contains("ip route get 10.0.0.1 ")
                && ipvs.contains("ip route replace 10.103.97.2/32 dev \"$dev\" src \"$src\""),
            "{ipvs}"
        );
        assert!(!ipvs.contains("ip addr replace"), "{ipvs}");
    }

    #[test]
    fn a_new_master_list_changes_the_pod_and_haproxy_needs_an_image() {
        let (three, two) = ([ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")], [ip("10.0.0.1"), ip("10.0.0.2")]);
        let hash = |masters: &[IpAddr]| {
            let target = BalancerTarget { vip: ip("10.103.97.2"), masters, haproxy_image: Some("i") };
            let script = install_script(ApiserverBalancer::Haproxy, &target, "w").expect("script");
            let line = script.lines().find(|l| l.contains("config-hash")).map(str::to_owned);
            // A refresh sets the same hash for the same masters.
            let refresh = refresh_script(&BalancerTarget { haproxy_image: None, ..target });
            let value = line.as_deref().and_then(|l| l.split('"').nth(1)).expect("hash");
            assert!(refresh.contains(&format!("config-hash: \"{value}\"")), "{refresh}");
            // Only a new hash replaces the pod, and only then does `refresh` wait for it.
            let guard = format!("if ! grep -q 'kiln.io/config-hash: \"{value}\"' {HAPROXY_MANIFEST}; then");
            let (before, after) = refresh.split_once(&guard).expect("the change is guarded");
            assert!(!before.contains(CHANGED) && after.contains(&format!("echo '{CHANGED}'")), "{refresh}");
            line
        };
        assert_ne!(hash(&three), hash(&two));
        let no_image = BalancerTarget { vip: ip("10.103.97.2"), masters: &two, haproxy_image: None };
        let error = install_script(ApiserverBalancer::Haproxy, &no_image, "10.0.0.9").expect_err("no image");
        assert!(error.to_string().contains("10.0.0.9"), "{error}");
    }
}

//! Snapshots of the generated kubeadm documents (insta): what kubeadm receives is reviewed as
//! text whenever it changes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::kubeadm_config::{JoinSpec, KubeadmConfig, KubeadmConfigError, KubeadmInputs};
use super::node_kernel::{KernelFeatures, NodeAdaptations};
use crate::clusterfile::Clusterfile;

/// The image's `etc/kubeadm.yml` as kiln's base image ships it (trimmed to what it sets).
const IMAGE_KUBEADM: &str = "\
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
kubernetesVersion: v1.30.2
apiServer:
  certSANs: [image.example]
  extraArgs:
    audit-policy-file: /etc/kubernetes/audit-policy.yml
    audit-log-path: /var/log/kubernetes/audit.log
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
maxPods: 200
";

/// A Clusterfile: one master, then `kubeadm_documents`.
fn with_cluster(kubeadm_documents: &str) -> String {
    format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata: {{name: c}}\nspec:\n  image: kubernetes:v1.30.2\n  \
         hosts:\n    - ips: [192.168.0.11]\n      roles: [master]\n---\n{kubeadm_documents}"
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn generate(
    masters: &[&str],
    env: &[(&str, &str)],
    clusterfile: Option<&str>,
) -> Result<KubeadmConfig, KubeadmConfigError> {
    generate_for(masters, env, clusterfile, NodeAdaptations::default())
}

fn generate_for(
    masters: &[&str],
    env: &[(&str, &str)],
    clusterfile: Option<&str>,
    nodes: NodeAdaptations,
) -> Result<KubeadmConfig, KubeadmConfigError> {
    let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let documents = match clusterfile {
        Some(text) => Clusterfile::parse("Clusterfile", text).expect("valid Clusterfile").documents,
        None => Vec::new(),
    };
    KubeadmConfig::generate(&KubeadmInputs {
        master0_name: "master-0".into(),
        master0_ip: ip(masters[0]),
        master_ips: masters.iter().map(|m| ip(m)).collect(),
        vip: ip("10.103.97.2"),
        registry: "sea.hub:5000".into(),
        env: &env,
        image_config: Some(("etc/kubeadm.yml", IMAGE_KUBEADM)),
        clusterfile_documents: ("Clusterfile", &documents),
        nodes,
    })
}

fn join(config: &KubeadmConfig, master: bool) -> String {
    config.join_yaml(&JoinSpec {
        node_name: if master { "master-1".into() } else { "worker-0".into() },
        node_ip: ip(if master { "192.168.0.12" } else { "192.168.0.21" }),
        api_server_endpoint: if master { "192.168.0.11:6443".into() } else { "10.103.97.2:6443".into() },
        token: "abcdef.0123456789abcdef".into(),
        ca_cert_hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        certificate_key: master.then(|| "a".repeat(64)),
    })
}

#[test]
fn one_master() {
    let config = generate(&["192.168.0.11"], &[], None).expect("config");
    insta::assert_snapshot!(config.init_yaml());
    insta::assert_snapshot!("one_master_worker_join", join(&config, false));
}

#[test]
fn three_masters() {
    let config = generate(&["192.168.0.11", "192.168.0.12", "192.168.0.13"], &[], None).expect("config");
    insta::assert_snapshot!(config.init_yaml());
    insta::assert_snapshot!("three_masters_master_join", join(&config, true));
}

/// Hosts like the e2e ones (containers on a cgroup v1 kernel without IPVS) next to a current one.
fn container_nodes() -> NodeAdaptations {
    let container = KernelFeatures {
        cgroup_v1: true,
        ip_vs: false,
        conntrack_max_read_only: true,
        oom_score_adj_restricted: true,
        nftables: true,
    };
    NodeAdaptations::for_kernels([KernelFeatures::default(), container])
}

#[test]
fn container_kernels_get_cgroup_v1_opt_in_nftables_and_fixed_conntrack() {
    let config = generate_for(&["192.168.0.11"], &[], None, container_nodes()).expect("config");
    let init = config.init_yaml();
    for want in ["failCgroupV1: false", "- SystemVerification", "mode: nftables", "maxPerCore: 0"] {
        assert!(init.contains(want), "init lacks {want}:\n{init}");
    }
    assert!(join(&config, false).contains("- SystemVerification"));
    insta::assert_snapshot!(init);
    // Where every host has IPVS, kube-proxy uses it and nothing else changes.
    let modern = generate(&["192.168.0.11"], &[], None).expect("config").init_yaml();
    assert!(modern.contains("mode: ipvs") && !modern.contains("failCgroupV1") && !modern.contains("maxPerCore"));
}

#[test]
fn an_explicit_ipvs_mode_is_refused_where_a_host_lacks_ipvs() {
    let clusterfile = with_cluster(
        "\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
",
    );
    let error = generate_for(&["192.168.0.11"], &[], Some(&clusterfile), container_nodes()).expect_err("no IPVS");
    assert!(error.to_string().contains("kiln picks nftables"), "{error}");
    assert!(generate(&["192.168.0.11"], &[], Some(&clusterfile)).is_ok());
}

#[test]
fn custom_cert_sans_are_kept_from_every_source() {
    let clusterfile = with_cluster(
        "\
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
apiServer:
  certSANs: [k8s.bank.example, 203.0.113.10]
",
    );
    let config = generate(&["192.168.0.11"], &[("CertSANs", "lb.bank.example,203.0.113.11")], Some(&clusterfile))
        .expect("config");
    let sans = config.cert_sans();
    for name in ["k8s.bank.example", "203.0.113.10", "lb.bank.example", "203.0.113.11", "image.example", "10.103.97.2"]
    {
        assert!(sans.iter().any(|s| s == name), "certSANs lack {name}: {sans:?}");
    }
    insta::assert_snapshot!(config.init_yaml());
}

#[test]
fn ipv6_service_cidr() {
    let config = generate(&["192.168.0.11"], &[("SvcCIDR", "fd00:10:96::/112"), ("PodCIDR", "fd00:100:64::/56")], None)
        .expect("config");
    assert_eq!(config.service_cidrs(), ["fd00:10:96::/112"]);
    insta::assert_snapshot!(config.init_yaml());
}

#[test]
fn clusterfile_kubeadm_override_wins_over_image_and_defaults() {
    let clusterfile = with_cluster(
        "\
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
kubernetesVersion: v1.31.1
networking:
  podSubnet: 10.244.0.0/16
apiServer:
  extraArgs:
    audit-log-path: /data/audit.log
    max-requests-inflight: \"800\"
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
maxPods: 110
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
nodeRegistration:
  kubeletExtraArgs:
    node-labels: zone=a
",
    );
    let config = generate(&["192.168.0.11"], &[("PodCIDR", "10.0.0.0/8")], Some(&clusterfile)).expect("config");
    assert_eq!(config.version.kubeadm_api(), "kubeadm.k8s.io/v1beta4");
    assert_eq!(config.pod_cidrs(), ["10.244.0.0/16"], "the Clusterfile beats env defaults");
    let init = config.init_yaml();
    // v1beta4: argument maps become name/value lists.
    assert!(init.contains("name: max-requests-inflight"), "{init}");
    assert!(init.contains("value: /data/audit.log"), "{init}");
    assert!(init.contains("maxPods: 110"), "{init}");
    insta::assert_snapshot!(init);
    insta::assert_snapshot!("clusterfile_override_worker_join", join(&config, false));
}

#[test]
fn version_picks_the_kubeadm_api_and_bad_input_is_named() {
    for (version, api) in [
        ("v1.21.14", "kubeadm.k8s.io/v1beta2"),
        ("v1.22.0", "kubeadm.k8s.io/v1beta3"),
        ("v1.30.2", "kubeadm.k8s.io/v1beta3"),
        ("v1.31.0", "kubeadm.k8s.io/v1beta4"),
        ("1.33.1", "kubeadm.k8s.io/v1beta4"),
    ] {
        let parsed: super::kubeadm_config::KubeVersion = version.parse().expect("version");
        assert_eq!(parsed.kubeadm_api(), api, "{version}");
    }
    for bad in ["v1.14.0", "v2.0.0", "latest", ""] {
        assert!(bad.parse::<super::kubeadm_config::KubeVersion>().is_err(), "{bad}");
    }

    let clusterfile = with_cluster(
        "\
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
apiServer:
  extraArgs: [oops]
",
    );
    let error = generate(&["192.168.0.11"], &[], Some(&clusterfile)).expect_err("bad extraArgs");
    let message = error.to_string();
    assert!(message.starts_with("Clusterfile:10"), "{message}");
    assert!(message.contains("apiServer.extraArgs"), "{message}");
}

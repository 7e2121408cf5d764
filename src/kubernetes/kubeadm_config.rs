//! The kubeadm configuration: Init, Cluster, Kubelet and KubeProxy documents for master0 and a
//! Join document per joining node.
//!
//! Sources, highest first (Sealer's order): the Clusterfile's kubeadm documents, the image's
//! `etc/kubeadm.yml`, kiln's defaults. A few values are kiln's to decide whatever they say (the
//! shared endpoint `apiserver.cluster.local:6443`, master0's advertise address, the cgroup
//! driver, kube-proxy leaving the VIP alone). Unlike Sealer, the user's `certSANs` are kept: the
//! apiserver certificate carries the union of every source's names and kiln's own. The
//! apiVersion follows the Kubernetes version (v1beta4 from 1.31, whose `extraArgs` are lists).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::node_kernel::{NodeAdaptations, ProxyMode};
use super::pki::{APISERVER_DOMAIN, APISERVER_PORT};
use crate::clusterfile::RawDocument;

pub const DEFAULT_POD_CIDR: &str = "100.64.0.0/10";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/22";
pub const DEFAULT_DNS_DOMAIN: &str = "cluster.local";
pub const CRI_SOCKET: &str = "unix:///run/containerd/containerd.sock";

const KINDS: [&str; 5] = [
    "InitConfiguration",
    "ClusterConfiguration",
    "JoinConfiguration",
    "KubeletConfiguration",
    "KubeProxyConfiguration",
];

#[derive(Debug, thiserror::Error)]
pub enum KubeadmConfigError {
    #[error("{source_name}: {reason}")]
    Document { source_name: String, reason: String },
    #[error(
        "no Kubernetes version: set `kubernetesVersion` in the image's etc/kubeadm.yml or in a ClusterConfiguration document of the Clusterfile"
    )]
    NoVersion,
    #[error("Kubernetes version `{0}` is not one kiln can configure (v1.15 or later, e.g. v1.30.2)")]
    Version(String),
    #[error(
        "kube-proxy `mode: ipvs` is asked for, but not every host's kernel has IP_VS (see `kiln check`, \
         row `kube-kernel`): leave `mode` out (kiln picks {fallback}) or load IPVS on every host"
    )]
    IpvsMissing { fallback: ProxyMode },
}

/// What the generated configuration depends on.
#[derive(Debug, Clone)]
pub struct KubeadmInputs<'a> {
    pub master0_name: String,
    pub master0_ip: IpAddr,
    pub master_ips: Vec<IpAddr>,
    /// The address workers reach the masters through (their local IPVS service).
    pub vip: IpAddr,
    /// `domain:port` of the in-cluster registry.
    pub registry: String,
    /// Cluster env: `PodCIDR`, `SvcCIDR`, `CertSANs`, `CgroupDriver`, `DNSDomain`.
    pub env: &'a BTreeMap<String, String>,
    /// The image's `etc/kubeadm.yml`, if it has one, and the name to show in errors.
    pub image_config: Option<(&'a str, &'a str)>,
    /// The Clusterfile's kubeadm documents and the Clusterfile's name.
    pub clusterfile_documents: (&'a str, &'a [RawDocument]),
    /// What the nodes' kernels call for (preflight decides it from their facts).
    pub nodes: NodeAdaptations,
}

/// A Kubernetes version, `v1.30.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub minor: u32,
    pub patch: u32,
}

impl std::str::FromStr for KubeVersion {
    type Err = KubeadmConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KubeadmConfigError::Version(s.to_owned());
        let rest = s.trim().strip_prefix('v').unwrap_or(s.trim());
        let rest = rest.split(['-', '+']).next().unwrap_or_default();
        let mut parts = rest.split('.');
        let (Some("1"), Some(minor), patch) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        let patch: u32 = patch.unwrap_or("0").parse().map_err(|_| bad())?;
        if minor < 15 {
            return Err(bad());
        }
        Ok(Self { minor, patch })
    }
}

impl KubeVersion {
    /// The kubeadm API this version reads.
    pub fn kubeadm_api(self) -> &'static str {
        match self.minor {
            ..=21 => "kubeadm.k8s.io/v1beta2",
            22..=30 => "kubeadm.k8s.io/v1beta3",
            _ => "kubeadm.k8s.io/v1beta4",
        }
    }

    /// v1beta4 writes `extraArgs` as `[{name, value}]` lists instead of maps.
    fn args_as_lists(self) -> bool {
        self.minor >= 31
    }
}

/// The merged configuration.
#[derive(Debug, Clone)]
pub struct KubeadmConfig {
    pub version: KubeVersion,
    init: Value,
    cluster: Value,
    join: Value,
    kubelet: Value,
    kube_proxy: Value,
}

/// What a node needs to join.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// `host:port` of the apiserver to join through.
    pub api_server_endpoint: String,
    pub token: String,
    pub ca_cert_hash: String,
    /// Set for masters: the key that decrypts the uploaded control-plane certificates.
    pub certificate_key: Option<String>,
}

impl KubeadmConfig {
    pub fn generate(inputs: &KubeadmInputs<'_>) -> Result<Self, KubeadmConfigError> {
        // Highest priority first; each layer fills what the ones above left unset.
        let mut layers: Vec<BTreeMap<&'static str, Value>> = Vec::new();
        let (clusterfile_name, documents) = inputs.clusterfile_documents;
        let mut from_clusterfile = BTreeMap::new();
        for doc in documents.iter().filter(|d| KINDS.contains(&d.kind.as_str())) {
            let where_ = format!("{clusterfile_name}:{}", doc.line);
            let value: Value = serde_saphyr::from_str(&doc.text).map_err(|e| KubeadmConfigError::Document {
                source_name: where_.clone(),
                reason: format!("{} document: {e}", doc.kind),
            })?;
            insert_document(&mut from_clusterfile, value, &where_)?;
        }
        layers.push(from_clusterfile);
        if let Some((name, text)) = inputs.image_config {
            let mut from_image = BTreeMap::new();
            let values: Vec<Value> = serde_saphyr::from_multiple(text)
                .map_err(|e| KubeadmConfigError::Document { source_name: name.to_owned(), reason: e.to_string() })?;
            for value in values.into_iter().filter(|v| !v.is_null()) {
                insert_document(&mut from_image, value, name)?;
            }
            layers.push(from_image);
        }
        layers.push(defaults(inputs));

        // One kind, every layer filling what the ones above left unset.
        let merged = |kind: &str| {
            let mut value = Value::Object(Map::new());
            for doc in layers.iter().filter_map(|layer| layer.get(kind)) {
                fill(&mut value, doc);
            }
            value
        };
        let cluster = merged("ClusterConfiguration");
        let version = cluster.get("kubernetesVersion").and_then(Value::as_str).ok_or(KubeadmConfigError::NoVersion)?;
        let mut config = Self {
            version: version.parse()?,
            init: merged("InitConfiguration"),
            join: merged("JoinConfiguration"),
            kubelet: merged("KubeletConfiguration"),
            kube_proxy: merged("KubeProxyConfiguration"),
            cluster,
        };
        config.force(inputs)?;
        Ok(config)
    }

    /// Values kiln decides whatever the sources say.
    fn force(&mut self, inputs: &KubeadmInputs<'_>) -> Result<(), KubeadmConfigError> {
        let endpoint = format!("{APISERVER_DOMAIN}:{APISERVER_PORT}");
        set(&mut self.cluster, &["controlPlaneEndpoint"], json!(endpoint));
        set(&mut self.init, &["localAPIEndpoint", "advertiseAddress"], json!(inputs.master0_ip.to_string()));
        set(&mut self.init, &["nodeRegistration", "name"], json!(inputs.master0_name));
        let mut sans = vec!["127.0.0.1".to_owned(), APISERVER_DOMAIN.to_owned(), inputs.vip.to_string()];
        sans.extend(list_env(inputs.env, "CertSANs"));
        sans.extend(inputs.master_ips.iter().map(IpAddr::to_string));
        union_strings(&mut self.cluster, &["apiServer", "certSANs"], sans);
        if let Some(driver) = inputs.env.get("CgroupDriver") {
            set(&mut self.kubelet, &["cgroupDriver"], json!(driver));
        }
        // kube-proxy must not clean up the workers' VIP service.
        let vip_cidr = match inputs.vip {
            IpAddr::V4(v4) => format!("{v4}/32"),
            IpAddr::V6(v6) => format!("{v6}/128"),
        };
        union_strings(&mut self.kube_proxy, &["ipvs", "excludeCIDRs"], vec![vip_cidr]);
        let nodes = inputs.nodes;
        if self.kube_proxy.get("mode").and_then(Value::as_str) == Some("ipvs") && !nodes.ip_vs_everywhere {
            return Err(KubeadmConfigError::IpvsMissing { fallback: nodes.proxy_mode });
        }
        if nodes.cgroup_v1 {
            // Kubernetes' own opt-in for cgroup v1 (KEP 5573): both, or neither works.
            set(&mut self.kubelet, &["failCgroupV1"], json!(false));
            for doc in [&mut self.init, &mut self.join] {
                union_strings(doc, &["nodeRegistration", "ignorePreflightErrors"], vec!["SystemVerification".into()]);
            }
        }
        Ok(())
    }

    /// Every name the apiserver certificate must carry beyond kubeadm's own.
    pub fn cert_sans(&self) -> Vec<String> {
        strings_at(&self.cluster, &["apiServer", "certSANs"])
    }

    pub fn service_cidrs(&self) -> Vec<String> {
        self.networking("serviceSubnet", DEFAULT_SERVICE_CIDR)
    }

    pub fn pod_cidrs(&self) -> Vec<String> {
        self.networking("podSubnet", DEFAULT_POD_CIDR)
    }

    pub fn dns_domain(&self) -> String {
        self.cluster.pointer("/networking/dnsDomain").and_then(Value::as_str).unwrap_or(DEFAULT_DNS_DOMAIN).to_owned()
    }

    fn networking(&self, field: &str, default: &str) -> Vec<String> {
        let value = self.cluster.pointer(&format!("/networking/{field}")).and_then(Value::as_str).unwrap_or(default);
        value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
    }

    /// master0's `kubeadm init --config` file.
    pub fn init_yaml(&self) -> String {
        let api = self.version.kubeadm_api();
        self.render(&[
            ("InitConfiguration", api, &self.init),
            ("ClusterConfiguration", api, &self.cluster),
            ("KubeletConfiguration", "kubelet.config.k8s.io/v1beta1", &self.kubelet),
            ("KubeProxyConfiguration", "kubeproxy.config.k8s.io/v1alpha1", &self.kube_proxy),
        ])
    }

    /// The ClusterConfiguration alone (no bootstrap token): what `kubeadm config images list`
    /// needs to name the cluster's images.
    pub fn cluster_yaml(&self) -> String {
        self.render(&[("ClusterConfiguration", self.version.kubeadm_api(), &self.cluster)])
    }

    /// A joining node's `kubeadm join --config` file.
    pub fn join_yaml(&self, spec: &JoinSpec) -> String {
        let mut join = self.join.clone();
        set(&mut join, &["discovery", "bootstrapToken", "apiServerEndpoint"], json!(spec.api_server_endpoint));
        set(&mut join, &["discovery", "bootstrapToken", "token"], json!(spec.token));
        set(&mut join, &["discovery", "bootstrapToken", "caCertHashes"], json!([spec.ca_cert_hash]));
        set(&mut join, &["nodeRegistration", "name"], json!(spec.node_name));
        if let Some(cri) = self.init.pointer("/nodeRegistration/criSocket") {
            fill(&mut join, &json!({ "nodeRegistration": { "criSocket": cri } }));
        }
        match &spec.certificate_key {
            Some(key) => {
                set(
                    &mut join,
                    &["controlPlane", "localAPIEndpoint", "advertiseAddress"],
                    json!(spec.node_ip.to_string()),
                );
                set(&mut join, &["controlPlane", "localAPIEndpoint", "bindPort"], json!(APISERVER_PORT));
                set(&mut join, &["controlPlane", "certificateKey"], json!(key));
            }
            None => {
                if let Value::Object(map) = &mut join {
                    map.remove("controlPlane");
                }
            }
        }
        let api = self.version.kubeadm_api();
        self.render(&[
            ("JoinConfiguration", api, &join),
            ("KubeletConfiguration", "kubelet.config.k8s.io/v1beta1", &self.kubelet),
        ])
    }

    fn render(&self, documents: &[(&str, &str, &Value)]) -> String {
        let mut out = String::new();
        for (kind, api, body) in documents {
            let mut doc = (*body).clone();
            if self.version.args_as_lists() {
                args_to_lists(&mut doc);
            }
            if !out.is_empty() {
                out.push_str("---\n");
            }
            // apiVersion and kind first, as people write them; a JSON tree always serialises.
            out.push_str(&format!("apiVersion: {api}\nkind: {kind}\n"));
            if doc.as_object().is_some_and(|m| !m.is_empty()) {
                out.push_str(&serde_saphyr::to_string(&doc).unwrap_or_default());
            }
        }
        out
    }
}

/// kiln's defaults: the lowest layer.
fn defaults(inputs: &KubeadmInputs<'_>) -> BTreeMap<&'static str, Value> {
    let env = |key: &str, default: &str| inputs.env.get(key).cloned().unwrap_or_else(|| default.to_owned());
    BTreeMap::from([
        (
            "InitConfiguration",
            json!({
                "localAPIEndpoint": { "bindPort": APISERVER_PORT },
                "nodeRegistration": { "criSocket": CRI_SOCKET },
            }),
        ),
        (
            "ClusterConfiguration",
            json!({
                // The in-cluster registry keeps registry.k8s.io's images under that name
                // (`registry::layout`), so kubeadm pulls them there directly.
                "imageRepository": format!("{}/registry.k8s.io", inputs.registry),
                "dns": { "imageRepository": format!("{}/registry.k8s.io/coredns", inputs.registry) },
                "networking": {
                    "podSubnet": env("PodCIDR", DEFAULT_POD_CIDR),
                    "serviceSubnet": env("SvcCIDR", DEFAULT_SERVICE_CIDR),
                    "dnsDomain": env("DNSDomain", DEFAULT_DNS_DOMAIN),
                },
                "etcd": { "local": { "extraArgs": { "listen-metrics-urls": "http://0.0.0.0:2381" } } },
            }),
        ),
        ("JoinConfiguration", json!({ "nodeRegistration": { "criSocket": CRI_SOCKET } })),
        ("KubeletConfiguration", json!({ "cgroupDriver": "systemd" })),
        ("KubeProxyConfiguration", kube_proxy_defaults(inputs.nodes)),
    ])
}

/// kube-proxy's mode for these nodes; where `nf_conntrack_max` is read-only, kube-proxy must
/// not try to raise it (it would exit).
fn kube_proxy_defaults(nodes: NodeAdaptations) -> Value {
    let mut doc = json!({ "mode": nodes.proxy_mode.as_str() });
    if nodes.conntrack_max_read_only {
        set(&mut doc, &["conntrack", "maxPerCore"], json!(0));
    }
    doc
}

/// Files a document under its kind, extraArgs as maps; a kind given twice by one source is an
/// error, not a silent pick.
fn insert_document(
    into: &mut BTreeMap<&'static str, Value>,
    mut value: Value,
    source_name: &str,
) -> Result<(), KubeadmConfigError> {
    let error = |reason: String| KubeadmConfigError::Document { source_name: source_name.to_owned(), reason };
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let Some(kind) = KINDS.iter().find(|k| **k == kind) else {
        return Err(error(format!(
            "`{kind}` is not a kubeadm configuration kind (expected one of {})",
            KINDS.join(", ")
        )));
    };
    if into.contains_key(kind) {
        return Err(error(format!("a second {kind} document")));
    }
    if let Value::Object(map) = &mut value {
        map.remove("apiVersion");
        map.remove("kind");
    }
    args_to_maps(&mut value).map_err(error)?;
    into.insert(kind, value);
    Ok(())
}

/// Where kubeadm keeps command-line argument sets.
const ARG_PATHS: [&[&str]; 6] = [
    &["apiServer", "extraArgs"],
    &["controllerManager", "extraArgs"],
    &["scheduler", "extraArgs"],
    &["etcd", "local", "extraArgs"],
    &["nodeRegistration", "kubeletExtraArgs"],
    &["controlPlane", "extraArgs"],
];

/// v1beta4's `[{name, value}]` argument lists into maps (what the merge works on).
fn args_to_maps(doc: &mut Value) -> Result<(), String> {
    for path in ARG_PATHS {
        if let Some(Value::Array(items)) = pointer_mut(doc, path) {
            let mut map = Map::new();
            for item in items.iter() {
                let (Some(name), Some(value)) = (item.get("name").and_then(Value::as_str), item.get("value")) else {
                    return Err(format!("`{}` entries need `name` and `value`", path.join(".")));
                };
                map.insert(name.to_owned(), value.clone());
            }
            set(doc, path, Value::Object(map));
        }
    }
    Ok(())
}

/// Maps back into v1beta4's lists, sorted by name.
fn args_to_lists(doc: &mut Value) {
    for path in ARG_PATHS {
        if let Some(Value::Object(map)) = pointer_mut(doc, path) {
            let list: Vec<Value> = map.iter().map(|(name, value)| json!({ "name": name, "value": value })).collect();
            set(doc, path, Value::Array(list));
        }
    }
}

/// Fills what `high` lacks from `low`, recursively; lists and values already set stay.
fn fill(high: &mut Value, low: &Value) {
    match (high, low) {
        (Value::Object(high), Value::Object(low)) => {
            for (key, low_value) in low {
                match high.get_mut(key) {
                    Some(Value::Null) | None => {
                        high.insert(key.clone(), low_value.clone());
                    }
                    Some(high_value) if key == "certSANs" || key == "excludeCIDRs" => {
                        // Names from every source are kept.
                        let extra: Vec<String> = low_value
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                            .unwrap_or_default();
                        union_into(high_value, extra);
                    }
                    Some(high_value) => fill(high_value, low_value),
                }
            }
        }
        (high @ Value::Null, low) => *high = low.clone(),
        _ => {}
    }
}

fn union_strings(doc: &mut Value, path: &[&str], extra: Vec<String>) {
    if pointer_mut(doc, path).is_none() {
        set(doc, path, json!([]));
    }
    if let Some(existing) = pointer_mut(doc, path) {
        union_into(existing, extra);
    }
}

fn union_into(list: &mut Value, extra: Vec<String>) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Value::Array(items) = list {
        for name in extra {
            if !name.is_empty() && !items.iter().any(|i| i.as_str() == Some(&name)) {
                items.push(json!(name));
            }
        }
    }
}

fn strings_at(doc: &Value, path: &[&str]) -> Vec<String> {
    let pointer = format!("/{}", path.join("/"));
    doc.pointer(&pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn pointer_mut<'a>(doc: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    doc.pointer_mut(&format!("/{}", path.join("/")))
}

/// Sets `path` to `value`, creating objects on the way (and replacing non-objects there).
fn set(doc: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = doc;
    for key in parents {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(map) = node {
        map.insert(last.to_string(), value);
    }
}

/// A comma-separated env value as a list.
fn list_env(env: &BTreeMap<String, String>, key: &str) -> Vec<String> {
    env.get(key)
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

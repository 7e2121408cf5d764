//! The cluster's PKI in kubeadm's layout, made by kiln on the operator.
//!
//! The shared part (cluster CA, front-proxy CA, etcd CA, service-account key pair) is made once
//! per cluster and kept in the cluster's state dir (keys 0600), so every run, scale-up and
//! renewal signs with the same CAs. Each control-plane node gets its own leaf certificates
//! (apiserver with every name it answers to, etcd server and peer) and kubeconfigs, in the files
//! and with the subjects kubeadm itself would write, so `kubeadm init` and `join` use them as
//! they are. Keys are RSA-2048 like kubeadm's; validity is kubeadm's (CA 10 years, leaf 1 year)
//! unless `--cert-validity` says otherwise (Sealer makes everything last 100 years and has no
//! renewal).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use crate::image::store::{FileError, create_private_dir, read_if_exists, write_private, write_public};
use crate::secret::Secret;

/// The apiserver name every node reaches (`/etc/hosts` points it at a master or the VIP).
pub const APISERVER_DOMAIN: &str = "apiserver.cluster.local";
pub const APISERVER_PORT: u16 = 6443;

/// How long certificates last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub ca_days: u32,
    pub leaf_days: u32,
}

impl Default for Validity {
    /// kubeadm's: CAs 10 years, everything else 1 year.
    fn default() -> Self {
        Self { ca_days: 3650, leaf_days: 365 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cluster PKI: {0}")]
    Io(#[from] FileError),
    #[error("{path} is not a usable part of the cluster PKI: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("generating a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("`{0}` is neither a DNS name nor an IP address")]
    AltName(String),
    #[error("service CIDR `{0}` is not an IP network (e.g. 10.96.0.0/22 or fd00:10:96::/112)")]
    ServiceCidr(String),
}

/// One CA: its certificate (PEM) and key.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl Authority {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// The cluster-wide part of the PKI: three CAs and the service-account key pair.
pub struct ClusterPki {
    ca: Authority,
    front_proxy_ca: Authority,
    etcd_ca: Authority,
    sa_key: KeyPair,
    validity: Validity,
}

/// What a control-plane node's certificates must name.
#[derive(Debug, Clone)]
pub struct ControlPlaneNode {
    /// The node name (kiln uses the host's hostname, as kubeadm does by default).
    pub name: String,
    pub ip: IpAddr,
}

/// Cluster settings the certificates depend on; kept beside the CAs by every run
/// ([`PkiSettings::save`]) so `kiln cert` reissues with the names the run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkiSettings {
    pub dns_domain: String,
    /// Service CIDRs (`10.96.0.0/22`, or dual-stack `a,b`): their first address is the
    /// `kubernetes` service's, which the apiserver certificate must carry.
    pub service_cidrs: Vec<String>,
    /// Extra apiserver names: the Clusterfile's certSANs, the VIP, every master's IP.
    pub cert_sans: Vec<String>,
}

/// A file for `/etc/kubernetes` on a host.
#[derive(Clone, Serialize)]
pub struct PkiFile {
    /// Relative to `/etc/kubernetes` (e.g. `pki/etcd/ca.crt`, `admin.conf`).
    pub path: String,
    #[serde(skip)]
    pub contents: Secret,
    pub mode: u32,
}

impl std::fmt::Debug for PkiFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PkiFile").field("path", &self.path).field("mode", &format_args!("{:o}", self.mode)).finish()
    }
}

/// Which of a node's files `kiln cert` reissues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reissue {
    /// `kiln cert renew`: every leaf certificate and the control plane's kubeconfigs.
    AllButKubelet,
    /// `kiln cert --alt-names`: the apiserver's certificate, with the new names, valid for
    /// `days` (what the one it replaces had left).
    ApiServer { days: u32 },
}

const SETTINGS_FILE: &str = "settings.json";
/// Names added by `kiln cert --alt-names`, one per line; every later run and renewal keeps them.
const ALT_NAMES_FILE: &str = "alt-names";

impl PkiSettings {
    /// Writes these settings beside the CAs in `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| corrupt(&dir.join(SETTINGS_FILE), e))?;
        Ok(write_public(&dir.join(SETTINGS_FILE), &json)?)
    }

    /// The settings the last run saved in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Self>, PkiError> {
        let path = dir.join(SETTINGS_FILE);
        match read_if_exists(&path)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| corrupt(&path, e)),
        }
    }

    /// Adds the names `kiln cert --alt-names` kept in `dir` (see [`add_alt_names`]).
    pub fn with_alt_names(mut self, dir: &Path) -> Result<Self, PkiError> {
        let added = alt_names(dir)?;
        self.cert_sans = dedup(self.cert_sans.into_iter().chain(added).collect());
        Ok(self)
    }
}

/// The names `kiln cert --alt-names` added to the cluster's apiserver certificates.
pub fn alt_names(dir: &Path) -> Result<Vec<String>, PkiError> {
    Ok(read_if_exists(&dir.join(ALT_NAMES_FILE))?
        .map(|text| text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default())
}

/// Checks `names` (each a DNS name or an IP address) and keeps them for every later run.
pub fn add_alt_names(dir: &Path, names: &[String]) -> Result<Vec<String>, PkiError> {
    if let Some(bad) = names.iter().find(|n| n.parse::<IpAddr>().is_err() && !is_dns_name(n)) {
        return Err(PkiError::AltName(bad.clone()));
    }
    let all = dedup(alt_names(dir)?.into_iter().chain(names.iter().cloned()).collect());
    write_public(&dir.join(ALT_NAMES_FILE), format!("{}\n", all.join("\n")).as_bytes())?;
    Ok(all)
}

/// A DNS name a certificate can carry: dot-separated labels of letters, digits and inner
/// hyphens, at most 253 characters, optionally under a leading `*.`.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What `kiln cert check-expiration` shows of one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub is_ca: bool,
    /// DNS names and IP addresses.
    pub names: Vec<String>,
}

/// Reads one PEM certificate.
pub fn summarize(pem: &str) -> Result<CertificateSummary, String> {
    use x509_parser::extensions::GeneralName;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    let cert = block.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let common_name = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned()
    };
    let not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .ok_or_else(|| "its expiry date is out of range".to_owned())?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => <[u8; 4]>::try_from(*b).ok().map(|a| IpAddr::from(a).to_string()),
                    16 => <[u8; 16]>::try_from(*b).ok().map(|a| IpAddr::from(a).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertificateSummary {
        subject: common_name(cert.subject()),
        issuer: common_name(cert.issuer()),
        not_after,
        is_ca: cert.is_ca(),
        names,
    })
}

impl ClusterPki {
    /// Loads the shared CAs from `dir` (kubeadm's names under it), creating what is missing.
    pub fn load_or_create(dir: &Path, validity: Validity) -> Result<Self, PkiError> {
        create_private_dir(&dir.join("etcd"))?;
        let ca = authority(dir, "ca", "kubernetes", validity)?;
        let front_proxy_ca = authority(dir, "front-proxy-ca", "front-proxy-ca", validity)?;
        let etcd_ca = authority(dir, "etcd/ca", "etcd-ca", validity)?;
        let sa_path = dir.join("sa.key");
        let sa_key = match read_if_exists(&sa_path)? {
            Some(pem) => KeyPair::from_pem(&pem).map_err(|e| corrupt(&sa_path, e))?,
            None => {
                let key = rsa_key()?;
                write_private(&sa_path, key.serialize_pem().as_bytes())?;
                write_public(&dir.join("sa.pub"), key.public_key_pem().as_bytes())?;
                key
            }
        };
        Ok(Self { ca, front_proxy_ca, etcd_ca, sa_key, validity })
    }

    /// Loads the shared CAs from `dir`, refusing to make any: for commands on a running
    /// cluster, where a new CA would sign for a cluster that does not trust it.
    pub fn load(dir: &Path, validity: Validity) -> Result<Self, PkiError> {
        for name in
            ["ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key", "sa.key"]
        {
            if !dir.join(name).is_file() {
                return Err(PkiError::Corrupt {
                    path: dir.join(name),
                    reason: "missing: the cluster's CAs are incomplete; restore them from a backup of this directory"
                        .into(),
                });
            }
        }
        Self::load_or_create(dir, validity)
    }

    /// The cluster CA certificate (PEM): what kubeconfigs and `--discovery-token-ca-cert-hash` use.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// `sha256:<hex>` of the cluster CA's public key (SubjectPublicKeyInfo), as kubeadm's
    /// `--discovery-token-ca-cert-hash` expects.
    pub fn ca_cert_hash(&self) -> String {
        use rcgen::PublicKeyData as _;
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(self.ca.key.subject_public_key_info())))
    }

    /// Every file a control-plane node needs under `/etc/kubernetes`: the shared CAs and keys,
    /// its own leaf certificates and its kubeconfigs.
    pub fn control_plane_files(
        &self,
        node: &ControlPlaneNode,
        settings: &PkiSettings,
    ) -> Result<Vec<PkiFile>, PkiError> {
        let mut files = self.shared_files();
        files.extend(self.node_files(node, settings, self.validity.leaf_days, |_| true)?);
        Ok(files)
    }

    /// The files `kiln cert` reissues on a control-plane node from the same CAs: every leaf
    /// certificate and the control plane's kubeconfigs, or only the apiserver's certificate.
    /// kubelet.conf is never among them: the kubelet rotates its own client certificate.
    pub fn reissued_files(
        &self,
        node: &ControlPlaneNode,
        settings: &PkiSettings,
        which: Reissue,
    ) -> Result<Vec<PkiFile>, PkiError> {
        match which {
            Reissue::AllButKubelet => {
                self.node_files(node, settings, self.validity.leaf_days, |leaf| leaf != "kubelet.conf")
            }
            Reissue::ApiServer { days } => self.node_files(node, settings, days, |leaf| leaf == "apiserver"),
        }
    }

    /// A node's own certificates and kubeconfigs, valid for `days`, each made only when
    /// `wanted(name)` (`apiserver`, `etcd/peer`, `admin.conf`, ...).
    fn node_files(
        &self,
        node: &ControlPlaneNode,
        settings: &PkiSettings,
        days: u32,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<PkiFile>, PkiError> {
        let mut files = Vec::new();
        let mut leaf = |name: &str, issuer: &Authority, params: &dyn Fn() -> Result<CertificateParams, PkiError>| {
            if !wanted(name) {
                return Ok::<(), PkiError>(());
            }
            let key = rsa_key()?;
            let cert = params()?.signed_by(&key, &issuer.issuer())?;
            files.push(public(&format!("pki/{name}.crt"), cert.pem()));
            files.push(private(&format!("pki/{name}.key"), key.serialize_pem()));
            Ok(())
        };
        leaf("apiserver", &self.ca, &|| {
            self.leaf_params(
                days,
                "kube-apiserver",
                None,
                ExtendedKeyUsagePurpose::ServerAuth,
                &apiserver_names(node, settings)?,
            )
        })?;
        leaf("apiserver-kubelet-client", &self.ca, &|| {
            self.leaf_params(
                days,
                "kube-apiserver-kubelet-client",
                Some("system:masters"),
                ExtendedKeyUsagePurpose::ClientAuth,
                &[],
            )
        })?;
        leaf("front-proxy-client", &self.front_proxy_ca, &|| {
            self.leaf_params(days, "front-proxy-client", None, ExtendedKeyUsagePurpose::ClientAuth, &[])
        })?;
        // etcd: server and peer certificates name the node and its addresses.
        let etcd_names = dedup(vec![
            node.name.clone(),
            "localhost".to_owned(),
            node.ip.to_string(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ]);
        for name in ["etcd/server", "etcd/peer"] {
            leaf(name, &self.etcd_ca, &|| {
                let mut params =
                    self.leaf_params(days, &node.name, None, ExtendedKeyUsagePurpose::ServerAuth, &etcd_names)?;
                params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
                Ok(params)
            })?;
        }
        leaf("etcd/healthcheck-client", &self.etcd_ca, &|| {
            self.leaf_params(days, "kube-etcd-healthcheck-client", None, ExtendedKeyUsagePurpose::ClientAuth, &[])
        })?;
        leaf("apiserver-etcd-client", &self.etcd_ca, &|| {
            self.leaf_params(days, "kube-apiserver-etcd-client", None, ExtendedKeyUsagePurpose::ClientAuth, &[])
        })?;

        // kubeconfigs: admin and kubelet through the shared endpoint; the controller manager
        // and scheduler talk to their own node's apiserver (kubeadm checks both).
        let endpoint = format!("https://{APISERVER_DOMAIN}:{APISERVER_PORT}");
        let local = format!("https://{}:{APISERVER_PORT}", bracketed(node.ip));
        for (file, user, group, server) in [
            ("admin.conf", "kubernetes-admin", Some("system:masters"), &endpoint),
            ("kubelet.conf", &*format!("system:node:{}", node.name), Some("system:nodes"), &endpoint),
            ("controller-manager.conf", "system:kube-controller-manager", None, &local),
            ("scheduler.conf", "system:kube-scheduler", None, &local),
        ] {
            if wanted(file) {
                files.push(self.kubeconfig(days, file, user, group, server)?);
            }
        }
        Ok(files)
    }

    /// An admin kubeconfig for `server` (used by `kiln kubeconfig` on the operator).
    pub fn admin_kubeconfig(&self, server: &str) -> Result<Secret, PkiError> {
        Ok(self
            .kubeconfig(self.validity.leaf_days, "admin.conf", "kubernetes-admin", Some("system:masters"), server)?
            .contents)
    }

    /// The shared CAs and the service-account pair, as kubeadm stores them.
    fn shared_files(&self) -> Vec<PkiFile> {
        let mut files = Vec::new();
        for (name, authority) in
            [("ca", &self.ca), ("front-proxy-ca", &self.front_proxy_ca), ("etcd/ca", &self.etcd_ca)]
        {
            files.push(public(&format!("pki/{name}.crt"), authority.cert_pem.clone()));
            files.push(private(&format!("pki/{name}.key"), authority.key.serialize_pem()));
        }
        files.push(private("pki/sa.key", self.sa_key.serialize_pem()));
        files.push(public("pki/sa.pub", self.sa_key.public_key_pem()));
        files
    }

    fn leaf_params(
        &self,
        days: u32,
        common_name: &str,
        organization: Option<&str>,
        usage: ExtendedKeyUsagePurpose,
        names: &[String],
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        if let Some(org) = organization {
            dn.push(DnType::OrganizationName, org);
        }
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days);
        Ok(params)
    }

    fn kubeconfig(
        &self,
        days: u32,
        file: &str,
        user: &str,
        group: Option<&str>,
        server: &str,
    ) -> Result<PkiFile, PkiError> {
        let params = self.leaf_params(days, user, group, ExtendedKeyUsagePurpose::ClientAuth, &[])?;
        let key = rsa_key()?;
        let cert = params.signed_by(&key, &self.ca.issuer())?;
        Ok(private(file, kubeconfig_yaml(&self.ca.cert_pem, server, user, &cert, &key)))
    }
}

/// Every name the apiserver answers to: kubeadm's (node name, the `kubernetes` service names
/// and IPs, the node's address) plus the shared endpoint, loopback and the user's certSANs.
fn apiserver_names(node: &ControlPlaneNode, settings: &PkiSettings) -> Result<Vec<String>, PkiError> {
    let mut names = vec![
        node.name.clone(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        format!("kubernetes.default.svc.{}", settings.dns_domain),
        APISERVER_DOMAIN.to_owned(),
        "localhost".to_owned(),
        node.ip.to_string(),
        "127.0.0.1".to_owned(),
    ];
    for cidr in &settings.service_cidrs {
        names.push(first_service_ip(cidr)?.to_string());
    }
    names.extend(settings.cert_sans.iter().cloned());
    Ok(dedup(names))
}

/// The first address of a service CIDR: the `kubernetes` service's cluster IP.
pub fn first_service_ip(cidr: &str) -> Result<IpAddr, PkiError> {
    let bad = || PkiError::ServiceCidr(cidr.to_owned());
    let (network, bits) = cidr.trim().split_once('/').ok_or_else(bad)?;
    let network: IpAddr = network.parse().map_err(|_| bad())?;
    let bits: u32 = bits.parse().map_err(|_| bad())?;
    match network {
        IpAddr::V4(v4) if bits < 32 => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            Ok(IpAddr::V4(((u32::from(v4) & mask) + 1).into()))
        }
        IpAddr::V6(v6) if bits < 128 => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            Ok(IpAddr::V6(((u128::from(v6) & mask) + 1).into()))
        }
        _ => Err(bad()),
    }
}

fn san(name: &str) -> Result<SanType, PkiError> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

fn dedup(names: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names.into_iter().filter(|n| !n.is_empty() && seen.insert(n.clone())).collect()
}

fn bracketed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A kubeconfig with the client certificate embedded, as kubeadm writes them.
fn kubeconfig_yaml(ca_pem: &str, server: &str, user: &str, cert: &Certificate, key: &KeyPair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let context = format!("{user}@kubernetes");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: kubernetes\n\
         contexts:\n- context:\n    cluster: kubernetes\n    user: {user}\n  name: {context}\ncurrent-context: {context}\n\
         preferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = b64(ca_pem),
        cert = b64(&cert.pem()),
        key = b64(&key.serialize_pem()),
    )
}

fn authority(dir: &Path, name: &str, common_name: &str, validity: Validity) -> Result<Authority, PkiError> {
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    // When issuing, rcgen takes only the subject from the CA's parameters (the key identifier
    // comes from its key), so these rebuilt parameters and the stored key sign exactly as the
    // stored certificate's issuer.
    match (read_if_exists(&cert_path)?, read_if_exists(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => {
            let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&key_path, e))?;
            Ok(Authority { params, key, cert_pem })
        }
        (None, None) => {
            set_validity(&mut params, validity.ca_days);
            let key = rsa_key()?;
            let cert = params.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_public(&cert_path, cert.pem().as_bytes())?;
            Ok(Authority { params, key, cert_pem: cert.pem() })
        }
        _ => Err(PkiError::Corrupt {
            path: cert_path,
            reason: "one of the CA's certificate and key is missing; restore both or remove both".into(),
        }),
    }
}

fn rsa_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?)
}

/// From an hour ago (hosts' clocks may lag the operator's a little) for `days`.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn public(path: &str, pem: String) -> PkiFile {
    PkiFile { path: path.to_owned(), contents: Secret::new(pem), mode: 0o644 }
}

fn private(path: &str, pem: impl Into<String>) -> PkiFile {
    PkiFile { path: path.to_owned(), contents: Secret::new(pem.into()), mode: 0o600 }
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::Corrupt { path: path.to_owned(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn settings() -> PkiSettings {
        PkiSettings {
            dns_domain: "cluster.local".into(),
            service_cidrs: vec!["10.96.0.0/22".into(), "fd00:10:96::/112".into()],
            cert_sans: vec!["k8s.example.com".into(), "10.103.97.2".into(), "192.168.10.12".into()],
        }
    }

    fn node() -> ControlPlaneNode {
        ControlPlaneNode { name: "master-0".into(), ip: "192.168.10.11".parse().expect("test address") }
    }

    /// Writes the files as they would land in /etc/kubernetes.
    fn install(files: &[PkiFile], root: &Path) {
        for f in files {
            let path = root.join(&f.path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            fs::write(&path, f.contents.expose()).expect("write");
        }
    }

    fn openssl(args: &[&str]) -> String {
        let out = Command::new("openssl").args(args).output().expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn p(root: &Path, rel: &str) -> String {
        root.join(rel).display().to_string()
    }

    #[test]
    fn every_certificate_verifies_with_openssl_against_its_ca_and_names_what_kubeadm_expects() {
        let state = tempfile::tempdir().expect("tempdir");
        let pki = ClusterPki::load_or_create(state.path(), Validity::default()).expect("pki");
        let files = pki.control_plane_files(&node(), &settings()).expect("files");
        let etc = tempfile::tempdir().expect("tempdir");
        install(&files, etc.path());
        let root = etc.path();
        for (cert, ca) in [
            ("pki/apiserver.crt", "pki/ca.crt"),
            ("pki/apiserver-kubelet-client.crt", "pki/ca.crt"),
            ("pki/front-proxy-client.crt", "pki/front-proxy-ca.crt"),
            ("pki/etcd/server.crt", "pki/etcd/ca.crt"),
            ("pki/etcd/peer.crt", "pki/etcd/ca.crt"),
            ("pki/etcd/healthcheck-client.crt", "pki/etcd/ca.crt"),
            ("pki/apiserver-etcd-client.crt", "pki/etcd/ca.crt"),
        ] {
            let out = openssl(&["verify", "-CAfile", &p(root, ca), &p(root, cert)]);
            assert!(out.contains(": OK"), "{cert}: {out}");
        }
        // A leaf does not verify against another CA.
        let wrong = Command::new("openssl")
            .args(["verify", "-CAfile", &p(root, "pki/etcd/ca.crt"), &p(root, "pki/apiserver.crt")])
            .output()
            .expect("openssl");
        assert!(!wrong.status.success());

        let sans = openssl(&["x509", "-noout", "-ext", "subjectAltName", "-in", &p(root, "pki/apiserver.crt")]);
        for name in [
            "DNS:master-0",
            "DNS:kubernetes.default.svc.cluster.local",
            "DNS:apiserver.cluster.local",
            "DNS:k8s.example.com",
            "IP Address:10.96.0.1",
            "IP Address:FD00:10:96:0:0:0:0:1",
            "IP Address:192.168.10.11",
            "IP Address:192.168.10.12",
            "IP Address:10.103.97.2",
            "IP Address:127.0.0.1",
        ] {
            assert!(sans.contains(name), "apiserver SANs lack {name}: {sans}");
        }
        let etcd_sans = openssl(&["x509", "-noout", "-ext", "subjectAltName", "-in", &p(root, "pki/etcd/server.crt")]);
        assert!(etcd_sans.contains("DNS:master-0") && etcd_sans.contains("IP Address:192.168.10.11"), "{etcd_sans}");
        let subject = openssl(&["x509", "-noout", "-subject", "-in", &p(root, "pki/apiserver-kubelet-client.crt")]);
        assert!(subject.contains("O = system:masters") && subject.contains("CN = kube-apiserver-kubelet-client"));
        let ca_subject = openssl(&["x509", "-noout", "-subject", "-in", &p(root, "pki/ca.crt")]);
        assert!(ca_subject.contains("CN = kubernetes"), "{ca_subject}");

        // The service-account public key is the private key's.
        let derived = openssl(&["pkey", "-in", &p(root, "pki/sa.key"), "-pubout"]);
        assert_eq!(derived, fs::read_to_string(root.join("pki/sa.pub")).expect("sa.pub"));

        // Keys and kubeconfigs are private; certificates are not.
        for f in &files {
            let private = f.path.ends_with(".key") || f.path.ends_with(".conf");
            assert_eq!(f.mode, if private { 0o600 } else { 0o644 }, "{}", f.path);
        }
        for key in ["ca.key", "etcd/ca.key", "front-proxy-ca.key", "sa.key"] {
            let mode = fs::metadata(state.path().join(key)).expect("stored").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
    }

    #[test]
    fn validity_is_kubeadms_unless_told_otherwise() {
        let days_left = |root: &Path, cert: &str| {
            let end = openssl(&["x509", "-noout", "-enddate", "-in", &p(root, cert)]);
            let end = end.trim().trim_start_matches("notAfter=");
            let parsed = chrono::NaiveDateTime::parse_from_str(end.trim_end_matches(" GMT"), "%b %e %H:%M:%S %Y")
                .expect("openssl date");
            (parsed.and_utc() - chrono::Utc::now()).num_days()
        };
        let state = tempfile::tempdir().expect("tempdir");
        let pki = ClusterPki::load_or_create(state.path(), Validity::default()).expect("pki");
        let etc = tempfile::tempdir().expect("tempdir");
        install(&pki.control_plane_files(&node(), &settings()).expect("files"), etc.path());
        assert!((3648..=3650).contains(&days_left(etc.path(), "pki/ca.crt")));
        assert!((363..=365).contains(&days_left(etc.path(), "pki/apiserver.crt")));

        let custom = tempfile::tempdir().expect("tempdir");
        let pki = ClusterPki::load_or_create(custom.path(), Validity { ca_days: 7300, leaf_days: 730 }).expect("pki");
        install(&pki.control_plane_files(&node(), &settings()).expect("files"), custom.path());
        assert!((7298..=7300).contains(&days_left(custom.path(), "pki/ca.crt")));
        assert!((728..=730).contains(&days_left(custom.path(), "pki/etcd/peer.crt")));
    }

    #[test]
    fn a_reloaded_pki_signs_with_the_same_cas_and_the_ca_hash_is_kubeadms() {
        let state = tempfile::tempdir().expect("tempdir");
        let first = ClusterPki::load_or_create(state.path(), Validity::default()).expect("pki");
        let ca_pem = first.ca_pem().to_owned();
        drop(first);
        let again = ClusterPki::load_or_create(state.path(), Validity::default()).expect("reload");
        assert_eq!(again.ca_pem(), ca_pem, "the CA was replaced on reload");
        let etc = tempfile::tempdir().expect("tempdir");
        install(&again.control_plane_files(&node(), &settings()).expect("files"), etc.path());
        let out = openssl(&["verify", "-CAfile", &p(state.path(), "ca.crt"), &p(etc.path(), "pki/apiserver.crt")]);
        assert!(out.contains(": OK"), "{out}");

        // kubeadm's documented way to compute --discovery-token-ca-cert-hash.
        let script = format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1",
            p(state.path(), "ca.crt")
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().expect("sh");
        assert_eq!(again.ca_cert_hash(), format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim()));

        // Half a CA is an error, not a silent new CA.
        fs::remove_file(state.path().join("etcd/ca.key")).expect("remove");
        let error = ClusterPki::load_or_create(state.path(), Validity::default()).err().expect("refused");
        assert!(error.to_string().contains("etcd/ca.crt"), "{error}");
    }

    #[test]
    fn kubeconfigs_carry_a_client_certificate_from_the_cluster_ca() {
        let state = tempfile::tempdir().expect("tempdir");
        let pki = ClusterPki::load_or_create(state.path(), Validity::default()).expect("pki");
        let files = pki.control_plane_files(&node(), &settings()).expect("files");
        let conf = |name: &str| files.iter().find(|f| f.path == name).expect("kubeconfig").contents.expose().to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, server, subject) in [
            ("admin.conf", "https://apiserver.cluster.local:6443", "O = system:masters, CN = kubernetes-admin"),
            ("kubelet.conf", "https://apiserver.cluster.local:6443", "O = system:nodes, CN = system:node:master-0"),
            ("controller-manager.conf", "https://192.168.10.11:6443", "CN = system:kube-controller-manager"),
            ("scheduler.conf", "https://192.168.10.11:6443", "CN = system:kube-scheduler"),
        ] {
            let text = conf(name);
            assert!(text.contains(&format!("server: {server}\n")), "{name}");
            let field = |key: &str| {
                let line = text.lines().find_map(|l| l.trim().strip_prefix(key)).expect("field");
                base64::engine::general_purpose::STANDARD.decode(line.trim()).expect("base64")
            };
            let cert = dir.path().join(format!("{name}.crt"));
            fs::write(&cert, field("client-certificate-data:")).expect("write");
            fs::write(dir.path().join("ca.crt"), field("certificate-authority-data:")).expect("write");
            let out = openssl(&["verify", "-CAfile", &p(dir.path(), "ca.crt"), &cert.display().to_string()]);
            assert!(out.contains(": OK"), "{name}: {out}");
            let got = openssl(&["x509", "-noout", "-subject", "-in", &cert.display().to_string()]);
            assert!(got.contains(subject), "{name}: {got}");
        }
    }

    #[test]
    fn first_service_ip_of_v4_and_v6_cidrs() {
        assert_eq!(first_service_ip("10.96.0.0/22").expect("v4").to_string(), "10.96.0.1");
        assert_eq!(first_service_ip("10.96.3.7/22").expect("v4").to_string(), "10.96.0.1");
        assert_eq!(first_service_ip("fd00:10:96::/112").expect("v6").to_string(), "fd00:10:96::1");
        for bad in ["10.96.0.0", "10.96.0.0/33", "x/8", "10.0.0.1/32"] {
            assert!(first_service_ip(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reissued_files_are_the_chosen_leaves_signed_by_the_same_cas() {
        let state = tempfile::tempdir().expect("tempdir");
        let first = ClusterPki::load_or_create(state.path(), Validity::default()).expect("pki");
        let etc = tempfile::tempdir().expect("tempdir");
        install(&first.control_plane_files(&node(), &settings()).expect("files"), etc.path());
        // A renewal later, with a longer validity, from the CAs as stored.
        let renewing = ClusterPki::load(state.path(), Validity { ca_days: 3650, leaf_days: 730 }).expect("load");
        let renewed = renewing.reissued_files(&node(), &settings(), Reissue::AllButKubelet).expect("renew");
        let paths: BTreeSet<&str> = renewed.iter().map(|f| f.path.as_str()).collect();
        assert!(!paths.contains("kubelet.conf"), "the kubelet rotates its own certificate");
        assert!(!paths.iter().any(|p| p.ends_with("ca.crt") || p.ends_with("ca.key") || p.starts_with("pki/sa.")));
        for want in ["pki/apiserver.crt", "pki/apiserver.key", "pki/etcd/peer.crt", "admin.conf", "scheduler.conf"] {
            assert!(paths.contains(want), "{want} in {paths:?}");
        }
        install(&renewed, etc.path());
        let root = etc.path();
        for (cert, ca) in [("pki/apiserver.crt", "pki/ca.crt"), ("pki/etcd/server.crt", "pki/etcd/ca.crt")] {
            let out = openssl(&["verify", "-CAfile", &p(root, ca), &p(root, cert)]);
            assert!(out.contains(": OK"), "{cert}: {out}");
        }
        let summary = summarize(&fs::read_to_string(root.join("pki/apiserver.crt")).expect("read")).expect("parse");
        let days = (summary.not_after - chrono::Utc::now()).num_days();
        assert!((729..=730).contains(&days), "renewed for {days} days");
        assert_eq!(summary.subject, "kube-apiserver");
        assert_eq!(summary.issuer, "kubernetes");
        assert!(!summary.is_ca);
        assert!(
            summary.names.contains(&"10.96.0.1".to_owned()) && summary.names.contains(&"k8s.example.com".to_owned())
        );
        let ca = summarize(&fs::read_to_string(root.join("pki/ca.crt")).expect("read")).expect("parse");
        assert!(ca.is_ca && (ca.not_after - chrono::Utc::now()).num_days() >= 3649);

        let only_apiserver =
            renewing.reissued_files(&node(), &settings(), Reissue::ApiServer { days: 100 }).expect("apiserver");
        let paths: Vec<&str> = only_apiserver.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["pki/apiserver.crt", "pki/apiserver.key"]);
        let days =
            (summarize(only_apiserver[0].contents.expose()).expect("parse").not_after - chrono::Utc::now()).num_days();
        assert!((99..=100).contains(&days), "the replaced certificate's remaining {days} days");
        assert!(summarize("not a certificate").is_err());
    }

    #[test]
    fn loading_for_a_running_cluster_never_makes_a_new_ca() {
        let state = tempfile::tempdir().expect("tempdir");
        assert!(matches!(ClusterPki::load(state.path(), Validity::default()), Err(PkiError::Corrupt { .. })));
        assert!(!state.path().join("ca.crt").exists(), "nothing was created");
        ClusterPki::load_or_create(state.path(), Validity::default()).expect("create");
        fs::remove_file(state.path().join("etcd/ca.key")).expect("remove");
        assert!(matches!(ClusterPki::load(state.path(), Validity::default()), Err(PkiError::Corrupt { .. })));
    }

    #[test]
    fn settings_and_alt_names_are_kept_beside_the_cas() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(PkiSettings::load(dir.path()).expect("load"), None);
        settings().save(dir.path()).expect("save");
        assert_eq!(PkiSettings::load(dir.path()).expect("load"), Some(settings()));
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        add_alt_names(dir.path(), &names(&["alt.example.com", "192.0.2.20"])).expect("add");
        let all = add_alt_names(dir.path(), &names(&["*.apps.example.com", "alt.example.com"])).expect("add");
        assert_eq!(all, names(&["alt.example.com", "192.0.2.20", "*.apps.example.com"]));
        let merged = settings().with_alt_names(dir.path()).expect("merge");
        assert_eq!(merged.cert_sans.len(), settings().cert_sans.len() + 3);
        for bad in ["not a name!", "-lead.example", "a..b", "", "x_y.example"] {
            assert!(matches!(add_alt_names(dir.path(), &names(&[bad])), Err(PkiError::AltName(_))), "{bad:?}");
        }
        assert_eq!(alt_names(dir.path()).expect("read").len(), 3, "a refused name changes nothing");
        fs::write(dir.path().join(SETTINGS_FILE), "{").expect("write");
        assert!(matches!(PkiSettings::load(dir.path()), Err(PkiError::Corrupt { .. })));
    }
}

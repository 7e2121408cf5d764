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
use serde::Serialize;

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

/// Cluster settings the certificates depend on.
#[derive(Debug, Clone)]
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
        let leaf = |params: CertificateParams, issuer: &Authority, name: &str| -> Result<Vec<PkiFile>, PkiError> {
            let key = rsa_key()?;
            let cert = params.signed_by(&key, &issuer.issuer())?;
            Ok(vec![
                public(&format!("pki/{name}.crt"), cert.pem()),
                private(&format!("pki/{name}.key"), key.serialize_pem()),
            ])
        };
        let apiserver = self.leaf_params(
            "kube-apiserver",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
            &apiserver_names(node, settings)?,
        )?;
        files.extend(leaf(apiserver, &self.ca, "apiserver")?);
        let kubelet_client = self.leaf_params(
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            ExtendedKeyUsagePurpose::ClientAuth,
            &[],
        )?;
        files.extend(leaf(kubelet_client, &self.ca, "apiserver-kubelet-client")?);
        let front_proxy_client =
            self.leaf_params("front-proxy-client", None, ExtendedKeyUsagePurpose::ClientAuth, &[])?;
        files.extend(leaf(front_proxy_client, &self.front_proxy_ca, "front-proxy-client")?);

        // etcd: server and peer certificates name the node and its addresses.
        let etcd_names = vec![
            node.name.clone(),
            "localhost".to_owned(),
            node.ip.to_string(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        for file in ["etcd/server", "etcd/peer"] {
            let mut params =
                self.leaf_params(&node.name, None, ExtendedKeyUsagePurpose::ServerAuth, &dedup(etcd_names.clone()))?;
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
            files.extend(leaf(params, &self.etcd_ca, file)?);
        }
        let healthcheck =
            self.leaf_params("kube-etcd-healthcheck-client", None, ExtendedKeyUsagePurpose::ClientAuth, &[])?;
        files.extend(leaf(healthcheck, &self.etcd_ca, "etcd/healthcheck-client")?);
        let etcd_client =
            self.leaf_params("kube-apiserver-etcd-client", None, ExtendedKeyUsagePurpose::ClientAuth, &[])?;
        files.extend(leaf(etcd_client, &self.etcd_ca, "apiserver-etcd-client")?);

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
            files.push(self.kubeconfig(file, user, group, server)?);
        }
        Ok(files)
    }

    /// An admin kubeconfig for `server` (used by `kiln kubeconfig` on the operator).
    pub fn admin_kubeconfig(&self, server: &str) -> Result<Secret, PkiError> {
        Ok(self.kubeconfig("admin.conf", "kubernetes-admin", Some("system:masters"), server)?.contents)
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
        set_validity(&mut params, self.validity.leaf_days);
        Ok(params)
    }

    fn kubeconfig(&self, file: &str, user: &str, group: Option<&str>, server: &str) -> Result<PkiFile, PkiError> {
        let params = self.leaf_params(user, group, ExtendedKeyUsagePurpose::ClientAuth, &[])?;
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
}

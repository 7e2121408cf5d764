//! TLS and credentials for the in-cluster registry.
//!
//! Made once per cluster on the operator and kept in the cluster's state dir (keys and the
//! password mode 0600), so every later run, resume or scale-up hands hosts the same CA. The
//! server certificate is reissued from that CA only when its names change (registry hosts
//! added); the CA itself never leaves the operator's key store except as a public certificate.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

use crate::clusterfile::LocalRegistry;
use crate::image::store::{FileError, create_private_dir, read_if_exists, write_private, write_public};
use crate::secret::Secret;

/// Certificates outlive a typical cluster without the 100-year validity Sealer uses.
const VALIDITY_YEARS: i32 = 10;
/// bcrypt cost for the htpasswd file (docker-distribution verifies every request with it).
const BCRYPT_COST: u32 = 10;
/// The user kiln creates when the Clusterfile names none.
pub const GENERATED_USER: &str = "kiln";

#[derive(Debug, thiserror::Error)]
pub enum RegistryAccessError {
    #[error("registry credentials: {0}")]
    Io(#[from] FileError),
    #[error("{path} is not kiln's registry state: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("generating the registry certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("hashing the registry password: {0}")]
    Hash(#[from] bcrypt::BcryptError),
    #[error("`registry.localRegistry`: set both username and password, or neither (kiln then generates them)")]
    HalfCredentials,
}

/// What the registry hosts serve with and what every host pulls with.
#[derive(Debug, Clone)]
pub struct RegistryAccess {
    /// `None` when the Clusterfile asks for `insecure: true` (plain HTTP).
    pub tls: Option<Tls>,
    pub credentials: Credentials,
}

#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA every host trusts for the registry domain.
    pub ca_pem: String,
    /// The registry's server certificate followed by the CA.
    pub chain_pem: String,
    pub key_pem: Secret,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    /// One line of an htpasswd file (bcrypt, which docker-distribution requires).
    pub fn htpasswd(&self) -> Result<Secret, RegistryAccessError> {
        let hash =
            bcrypt::hash_with_result(self.password.expose(), BCRYPT_COST)?.format_for_version(bcrypt::Version::TwoY);
        Ok(Secret::new(format!("{}:{hash}\n", self.username)))
    }

    /// The `Authorization` header value for HTTP basic auth.
    pub fn basic_auth(&self) -> Secret {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.username, self.password.expose()));
        Secret::new(format!("Basic {token}"))
    }
}

/// The names the server certificate must carry: the registry domain, the Clusterfile's extra
/// names, loopback, and every registry host's address (so it also answers by IP).
pub fn subject_alt_names(registry: &LocalRegistry, registry_hosts: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    let mut names: Vec<String> = vec![registry.domain.clone(), "localhost".into()];
    names.extend(registry.extra_dns_names.iter().cloned());
    names.push("127.0.0.1".into());
    names.extend(registry.extra_ips.iter().map(IpAddr::to_string));
    names.extend(registry_hosts.into_iter().map(|ip| ip.to_string()));
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Loads the cluster's registry access from `state_dir/registry`, creating what is missing.
pub fn load_or_create(
    state_dir: &Path,
    cluster_name: &str,
    registry: &LocalRegistry,
    registry_hosts: impl IntoIterator<Item = IpAddr>,
) -> Result<RegistryAccess, RegistryAccessError> {
    let dir = state_dir.join("registry");
    create_private_dir(&dir)?;
    let credentials = match (&registry.username, &registry.password) {
        (Some(username), Some(password)) => Credentials { username: username.clone(), password: password.clone() },
        (None, None) => generated_credentials(&dir.join("credentials.json"))?,
        _ => return Err(RegistryAccessError::HalfCredentials),
    };
    let tls = if registry.insecure {
        None
    } else {
        Some(tls(&dir, cluster_name, &subject_alt_names(registry, registry_hosts))?)
    };
    Ok(RegistryAccess { tls, credentials })
}

fn generated_credentials(path: &Path) -> Result<Credentials, RegistryAccessError> {
    if let Some(text) = read_if_exists(path)? {
        return serde_json::from_str(&text)
            .map_err(|e| RegistryAccessError::Corrupt { path: path.to_owned(), reason: e.to_string() });
    }
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| RegistryAccessError::Corrupt { path: path.to_owned(), reason: "no randomness".into() })?;
    let credentials = Credentials {
        username: GENERATED_USER.into(),
        password: Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)),
    };
    #[derive(Serialize)]
    struct Stored<'a> {
        username: &'a str,
        password: &'a str,
    }
    let stored = Stored { username: &credentials.username, password: credentials.password.expose() };
    let json = serde_json::to_string_pretty(&stored)
        .map_err(|e| RegistryAccessError::Corrupt { path: path.to_owned(), reason: e.to_string() })?;
    write_private(path, json.as_bytes())?;
    Ok(credentials)
}

/// The names a stored server certificate was issued for.
#[derive(Serialize, Deserialize, PartialEq)]
struct Issued {
    subject_alt_names: Vec<String>,
}

fn tls(dir: &Path, cluster_name: &str, names: &[String]) -> Result<Tls, RegistryAccessError> {
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let ca_params = ca_params(cluster_name)?;
    let ca_key_pair = match read_if_exists(&ca_key)? {
        Some(pem) => KeyPair::from_pem(&pem)?,
        None => {
            let key = KeyPair::generate()?;
            let cert = ca_params.self_signed(&key)?;
            write_private(&ca_key, key.serialize_pem().as_bytes())?;
            write_public(&ca_cert, cert.pem().as_bytes())?;
            // A new CA invalidates any server certificate signed by an older one.
            let _ = fs::remove_file(dir.join("server.json"));
            key
        }
    };
    let ca_pem = read_if_exists(&ca_cert)?.ok_or_else(|| RegistryAccessError::Corrupt {
        path: ca_cert.clone(),
        reason: "the CA key is there but its certificate is missing".into(),
    })?;

    let (server_cert, server_key, issued_path) =
        (dir.join("server.crt"), dir.join("server.key"), dir.join("server.json"));
    let wanted = Issued { subject_alt_names: names.to_vec() };
    let current = read_if_exists(&issued_path)?.and_then(|t| serde_json::from_str::<Issued>(&t).ok());
    let reusable = current.as_ref() == Some(&wanted);
    let (cert_pem, key_pem) = match (reusable, read_if_exists(&server_cert)?, read_if_exists(&server_key)?) {
        (true, Some(cert), Some(key)) => (cert, key),
        _ => {
            let mut params = CertificateParams::new(names.to_vec())?;
            params.distinguished_name = distinguished_name(&format!("kiln registry {cluster_name}"));
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.use_authority_key_identifier_extension = true;
            set_validity(&mut params);
            let key = KeyPair::generate()?;
            let issuer = Issuer::from_params(&ca_params, &ca_key_pair);
            let cert = params.signed_by(&key, &issuer)?;
            write_private(&server_key, key.serialize_pem().as_bytes())?;
            write_public(&server_cert, cert.pem().as_bytes())?;
            let json = serde_json::to_vec(&wanted)
                .map_err(|e| RegistryAccessError::Corrupt { path: issued_path.clone(), reason: e.to_string() })?;
            write_public(&issued_path, &json)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    Ok(Tls { chain_pem: format!("{cert_pem}{ca_pem}"), ca_pem, key_pem: Secret::new(key_pem) })
}

/// The CA's parameters. Rebuilt identically on every run: with the stored key they form the
/// same issuer that signed the stored CA certificate.
fn ca_params(cluster_name: &str) -> Result<CertificateParams, RegistryAccessError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(&format!("kiln registry CA {cluster_name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params);
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kiln");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// From yesterday (hosts' clocks may lag the operator's) for [`VALIDITY_YEARS`].
fn set_validity(params: &mut CertificateParams) {
    let start = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    // Month and day come from a real date, so they fit in a u8.
    let (month, day) = (start.month() as u8, start.day().min(28) as u8);
    params.not_before = rcgen::date_time_ymd(start.year(), month, day);
    params.not_after = rcgen::date_time_ymd(start.year() + VALIDITY_YEARS, month, day);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn registry() -> LocalRegistry {
        LocalRegistry { extra_dns_names: vec!["hub.example".into()], ..LocalRegistry::default() }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn generated_once_then_reused_with_private_modes() {
        let state = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(state.path(), "demo", &registry(), [ip("10.0.0.1")]).expect("create");
        let second = load_or_create(state.path(), "demo", &registry(), [ip("10.0.0.1")]).expect("reuse");
        let (a, b) = (first.tls.expect("tls"), second.tls.expect("tls"));
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.chain_pem, b.chain_pem);
        assert_eq!(first.credentials.password, second.credentials.password);
        assert_eq!(first.credentials.username, GENERATED_USER);
        assert!(first.credentials.password.expose().len() >= 32);
        for private in ["ca.key", "server.key", "credentials.json"] {
            let mode = fs::metadata(state.path().join("registry").join(private)).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
    }

    #[test]
    fn server_certificate_is_reissued_from_the_same_ca_when_names_change() {
        let state = tempfile::tempdir().expect("tempdir");
        let one = load_or_create(state.path(), "demo", &registry(), [ip("10.0.0.1")]).expect("one").tls.expect("tls");
        let two = load_or_create(state.path(), "demo", &registry(), [ip("10.0.0.1"), ip("10.0.0.2")])
            .expect("two")
            .tls
            .expect("tls");
        assert_eq!(one.ca_pem, two.ca_pem);
        assert_ne!(one.chain_pem, two.chain_pem);
        verify_chain(&two, "sea.hub", "10.0.0.2");
    }

    /// rustls (the same verifier a client would run) accepts the server certificate for the
    /// registry domain and for each registry host's address, and rejects other names.
    fn verify_chain(tls: &Tls, domain: &str, host_ip: &str) {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(tls.ca_pem.as_bytes()).expect("ca pem")).expect("add ca");
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .expect("verifier");
        let chain: Vec<CertificateDer> =
            CertificateDer::pem_slice_iter(tls.chain_pem.as_bytes()).collect::<Result<_, _>>().expect("chain");
        let now = UnixTime::now();
        for name in [domain, "hub.example", host_ip, "127.0.0.1"] {
            let server = ServerName::try_from(name.to_owned()).expect("name");
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &server, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = ServerName::try_from("other.example".to_owned()).expect("name");
        assert!(verifier.verify_server_cert(&chain[0], &chain[1..], &other, &[], now).is_err());
    }

    #[test]
    fn insecure_registries_get_credentials_only() {
        let state = tempfile::tempdir().expect("tempdir");
        let registry = LocalRegistry { insecure: true, ..LocalRegistry::default() };
        let access = load_or_create(state.path(), "demo", &registry, [ip("10.0.0.1")]).expect("create");
        assert!(access.tls.is_none());
        assert!(!state.path().join("registry/ca.key").exists());
    }

    #[test]
    fn clusterfile_credentials_are_used_and_half_of_them_refused() {
        let state = tempfile::tempdir().expect("tempdir");
        let mut registry = LocalRegistry {
            username: Some("admin".into()),
            password: Some(Secret::new("s3cret")),
            ..LocalRegistry::default()
        };
        let access = load_or_create(state.path(), "demo", &registry, []).expect("create");
        assert_eq!(access.credentials.username, "admin");
        assert!(!state.path().join("registry/credentials.json").exists());
        let line = access.credentials.htpasswd().expect("hash");
        let (user, hash) = line.expose().trim_end().split_once(':').expect("user:hash");
        assert_eq!(user, "admin");
        assert!(hash.starts_with("$2y$10$"));
        assert!(bcrypt::verify("s3cret", hash).expect("verify"));
        assert_eq!(access.credentials.basic_auth().expose(), "Basic YWRtaW46czNjcmV0");
        assert_eq!(format!("{:?}", access.credentials), r#"Credentials { username: "admin", password: **** }"#);
        registry.password = None;
        assert!(matches!(
            load_or_create(state.path(), "demo", &registry, []),
            Err(RegistryAccessError::HalfCredentials)
        ));
    }
}

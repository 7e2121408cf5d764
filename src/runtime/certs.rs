//! `kiln cert`: a `kubernetes`-runtime cluster's certificates after the run. Their expiry on
//! every master (`check-expiration`), renewal from the same CAs (`renew`), and more names on
//! the apiserver's certificate (`--alt-names`). Unlike `kubeadm certs renew` (and Sealer, which
//! has no renewal and leaves the restart to the user), kiln restarts the control plane itself,
//! one master at a time so the others keep serving. It then waits until each apiserver serves
//! the new certificate, checked over the SSH connection against kiln's own copy.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::run::RunReporter;
use super::{ConnectOptions, Fleet, static_pod};
use crate::clusterfile::{Clusterfile, Host};
use crate::kubernetes::pki::{
    self, APISERVER_PORT, CertificateSummary, ClusterPki, ControlPlaneNode, PkiError, PkiSettings, Reissue, Validity,
};
use crate::ssh::{Session, SshError};

/// Certificates kubeadm keeps under `/etc/kubernetes/pki`, CAs first.
const CERTIFICATES: &[&str] = &[
    "pki/ca.crt",
    "pki/front-proxy-ca.crt",
    "pki/etcd/ca.crt",
    "pki/apiserver.crt",
    "pki/apiserver-kubelet-client.crt",
    "pki/apiserver-etcd-client.crt",
    "pki/front-proxy-client.crt",
    "pki/etcd/server.crt",
    "pki/etcd/peer.crt",
    "pki/etcd/healthcheck-client.crt",
];
/// Kubeconfigs whose client certificates expire with the others.
const KUBECONFIGS: &[&str] =
    &["admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"];
/// How long an apiserver may take to come back with its new certificate.
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "cluster `{name}` has no PKI on this machine ({}): `kiln run` it first (with a `kubernetes`-runtime image)",
        dir.display()
    )]
    NoPki { name: String, dir: PathBuf },
    #[error(
        "cluster `{name}`: the run's certificate settings ({}) are missing: run `kiln run` again first (it changes nothing on a finished cluster)",
        dir.join("settings.json").display()
    )]
    NoSettings { name: String, dir: PathBuf },
    #[error("the Clusterfile names no master")]
    NoMaster,
    #[error("cannot reach {}; nothing was changed\n  {}", hosts.join(", "), reasons.join("\n  "))]
    Unreachable { hosts: Vec<String>, reasons: Vec<String> },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the task making certificates stopped")]
    Task(#[from] tokio::task::JoinError),
    #[error("{host}: {path} is not usable: {reason}")]
    HostFile { host: IpAddr, path: String, reason: String },
    #[error(
        "the apiserver on {host} does not serve its new certificate {seconds} s after its restart ({last}); \
         look at `journalctl -u kubelet` and `crictl ps -a` there, then run the same command again"
    )]
    NotRestarted { host: IpAddr, seconds: u64, last: String },
    #[error(transparent)]
    StaticPod(Box<static_pod::StaticPodError>),
    #[error(transparent)]
    Ssh(Box<SshError>),
}

impl From<static_pod::StaticPodError> for CertError {
    fn from(e: static_pod::StaticPodError) -> Self {
        Self::StaticPod(Box::new(e))
    }
}

impl From<SshError> for CertError {
    fn from(e: SshError) -> Self {
        Self::Ssh(Box::new(e))
    }
}

/// One certificate on one master, as `check-expiration` reports it.
#[derive(Debug, Serialize)]
pub struct CertificateStatus {
    pub host: IpAddr,
    /// Relative to `/etc/kubernetes` (`pki/apiserver.crt`, `admin.conf`).
    pub file: String,
    #[serde(flatten)]
    pub summary: CertificateSummary,
    /// Whole days left (negative once expired).
    pub residual_days: i64,
}

/// Everything `kiln cert` needs about a cluster.
pub struct CertRequest {
    pub clusterfile: Clusterfile,
    pub connect: ConnectOptions,
    /// The cluster's state dir on this machine (`<root>/clusters/<name>`).
    pub state_dir: PathBuf,
}

impl CertRequest {
    fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    fn masters(&self) -> Result<Vec<Host>, CertError> {
        let masters: Vec<Host> = self.clusterfile.cluster.hosts.iter().filter(|h| h.is_master()).cloned().collect();
        if masters.is_empty() { Err(CertError::NoMaster) } else { Ok(masters) }
    }

    /// Sessions to every master, or an error naming those that cannot be reached.
    async fn connect_masters(&self) -> Result<(Vec<Host>, Fleet), CertError> {
        let masters = self.masters()?;
        let fleet = Fleet::connect(&masters, &self.connect).await;
        if !fleet.failed.is_empty() {
            let hosts = fleet.failed.keys().map(ToString::to_string).collect();
            let reasons = fleet.failed.iter().map(|(ip, e)| format!("{ip}: {}", crate::error_chain(e))).collect();
            fleet.close().await;
            return Err(CertError::Unreachable { hosts, reasons });
        }
        Ok((masters, fleet))
    }
}

/// Reads every certificate and kubeconfig client certificate on every master. Only
/// certificates leave the hosts: kubeconfigs' keys stay where they are.
pub async fn check_expiration(request: &CertRequest) -> Result<Vec<CertificateStatus>, CertError> {
    let (masters, fleet) = request.connect_masters().await?;
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for master in &masters {
        let session = &fleet.sessions[&master.ip];
        let listing = session.run(&read_certificates_script()).await?.stdout_text();
        for (file, pem) in parse_listing(&listing) {
            let summary = pki::summarize(&pem).map_err(|reason| CertError::HostFile {
                host: master.ip,
                path: file.clone(),
                reason,
            })?;
            let residual_days = (summary.not_after - now).num_days();
            rows.push(CertificateStatus { host: master.ip, file, summary, residual_days });
        }
    }
    fleet.close().await;
    Ok(rows)
}

/// Prints `==> FILE` and then each certificate in PEM; for kubeconfigs, the embedded
/// client certificate (base64, decoded on the operator) or the PEM file it points at, without
/// the key that file also holds.
fn read_certificates_script() -> String {
    format!(
        "cd /etc/kubernetes 2>/dev/null || exit 0\n\
         for f in {certs}; do if [ -f \"$f\" ]; then echo \"==> $f\"; cat \"$f\"; fi; done\n\
         for f in {confs}; do [ -f \"$f\" ] || continue\n\
         data=$(sed -n 's/^ *client-certificate-data: *//p' \"$f\" | head -n 1)\n\
         file=$(sed -n 's/^ *client-certificate: *//p' \"$f\" | head -n 1)\n\
         if [ -n \"$data\" ]; then echo \"==> $f base64\"; echo \"$data\"; \
         elif [ -n \"$file\" ] && [ -f \"$file\" ]; then echo \"==> $f\"; \
         sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' \"$file\"; fi\n\
         done\n",
        certs = CERTIFICATES.join(" "),
        confs = KUBECONFIGS.join(" "),
    )
}

/// `(file, PEM)` pairs from [`read_certificates_script`]'s output.
fn parse_listing(listing: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String, bool)> = Vec::new();
    for line in listing.lines() {
        if let Some(header) = line.strip_prefix("==> ") {
            let (name, encoded) = match header.strip_suffix(" base64") {
                Some(name) => (name, true),
                None => (header, false),
            };
            files.push((name.to_owned(), String::new(), encoded));
        } else if let Some((_, body, _)) = files.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    files
        .into_iter()
        .map(|(name, body, encoded)| {
            let pem = if encoded {
                base64::engine::general_purpose::STANDARD
                    .decode(body.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default()
            } else {
                body
            };
            (name, pem)
        })
        .collect()
}

/// What a renewal or a change of names did on one master.
#[derive(Debug, Serialize)]
pub struct Reissued {
    pub host: IpAddr,
    pub files: Vec<String>,
    /// The restarted static pods.
    pub restarted: Vec<String>,
    pub apiserver_not_after: chrono::DateTime<chrono::Utc>,
}

/// `kiln cert renew`: every master's leaf certificates and control-plane kubeconfigs from
/// the cluster's CAs, valid for `validity.leaf_days` from now.
pub async fn renew(
    request: &CertRequest,
    validity: Validity,
    reporter: &dyn RunReporter,
) -> Result<Vec<Reissued>, CertError> {
    reissue(request, validity, Reissue::AllButKubelet, reporter).await
}

/// `kiln cert --alt-names`: the names are kept for every later run and renewal, then each
/// master's apiserver certificate is reissued with them. The apiserver certificate keeps
/// kiln's default validity (`renew` sets another).
pub async fn add_alt_names(
    request: &CertRequest,
    names: &[String],
    reporter: &dyn RunReporter,
) -> Result<Vec<Reissued>, CertError> {
    let dir = request.pki_dir();
    saved_settings(request, &dir)?;
    pki::add_alt_names(&dir, names)?;
    reissue(request, Validity::default(), Reissue::ApiServer { days: 0 }, reporter).await
}

/// The certificate settings the last run saved, with the names `--alt-names` added.
fn saved_settings(request: &CertRequest, dir: &Path) -> Result<PkiSettings, CertError> {
    let name = request.clusterfile.cluster.name.clone();
    if !dir.join("ca.crt").is_file() {
        return Err(CertError::NoPki { name, dir: dir.to_owned() });
    }
    Ok(PkiSettings::load(dir)?
        .ok_or_else(|| CertError::NoSettings { name, dir: dir.to_owned() })?
        .with_alt_names(dir)?)
}

async fn reissue(
    request: &CertRequest,
    validity: Validity,
    which: Reissue,
    reporter: &dyn RunReporter,
) -> Result<Vec<Reissued>, CertError> {
    let dir = request.pki_dir();
    let settings = saved_settings(request, &dir)?;
    let pki_dir = dir.clone();
    let cluster_pki = Arc::new(tokio::task::spawn_blocking(move || ClusterPki::load(&pki_dir, validity)).await??);
    reporter.phase("connect", "reach every master");
    let (masters, fleet) = request.connect_masters().await?;
    reporter.phase("reissue", "new certificates and a control-plane restart, one master at a time");
    let mut done = Vec::new();
    for master in &masters {
        let session = &fleet.sessions[&master.ip];
        match reissue_on(session, master, &cluster_pki, &settings, which, reporter).await {
            Ok(outcome) => done.push(outcome),
            Err(e) => {
                fleet.close().await;
                return Err(e);
            }
        }
    }
    fleet.close().await;
    Ok(done)
}

async fn reissue_on(
    session: &Session,
    master: &Host,
    cluster_pki: &Arc<ClusterPki>,
    settings: &PkiSettings,
    which: Reissue,
    reporter: &dyn RunReporter,
) -> Result<Reissued, CertError> {
    let host = master.ip.to_string();
    // The node name the run used: the hostname, lower-cased (as `kiln run` and Kubernetes do).
    let node_name = session.run("hostname").await?.stdout_text().trim().to_lowercase();
    let node = ControlPlaneNode { name: node_name, ip: master.ip };
    // New names do not change how long the apiserver's certificate lasts.
    let which = match which {
        Reissue::ApiServer { .. } => Reissue::ApiServer { days: remaining_days(session, master.ip).await? },
        other => other,
    };
    let (pki, settings_owned) = (Arc::clone(cluster_pki), settings.clone());
    let files = tokio::task::spawn_blocking(move || pki.reissued_files(&node, &settings_owned, which)).await??;
    let apiserver_pem =
        files.iter().find(|f| f.path == "pki/apiserver.crt").map(|f| f.contents.expose().to_owned()).ok_or_else(
            || CertError::HostFile { host: master.ip, path: "pki/apiserver.crt".into(), reason: "not reissued".into() },
        )?;
    // root's kubeconfig follows admin.conf where it is a copy of it (kiln's run made it so).
    let root_copy = which == Reissue::AllButKubelet
        && session.exec("cmp -s /root/.kube/config /etc/kubernetes/admin.conf").await?.status == 0;
    for file in &files {
        session.upload(file.contents.expose().as_bytes(), &format!("/etc/kubernetes/{}", file.path), file.mode).await?;
    }
    if root_copy {
        session.run("install -m 0600 /etc/kubernetes/admin.conf /root/.kube/config").await?;
    }
    reporter.step(&host, &format!("{} files reissued", files.len()));
    let pods: &[&str] = match which {
        Reissue::AllButKubelet => &["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"],
        Reissue::ApiServer { .. } => &["kube-apiserver"],
    };
    let mut restarts = Vec::new();
    for pod in pods {
        restarts.extend(static_pod::restart(session, master.ip, pod).await?);
    }
    let restarted: Vec<String> = restarts.iter().map(|r| r.pod.clone()).collect();
    reporter.step(&host, &format!("restarted {}; waiting for the apiserver", restarted.join(", ")));
    // The old apiserver serves the new certificate as soon as the file changes: wait for the
    // kubelet's new containers first, so the next master restarts only once this one is back.
    for restart in &restarts {
        static_pod::wait_replaced(session, master.ip, restart, RESTART_TIMEOUT).await?;
    }
    wait_for_certificate(session, master.ip, cluster_pki.ca_pem(), &apiserver_pem).await?;
    let summary = pki::summarize(&apiserver_pem).map_err(|reason| CertError::HostFile {
        host: master.ip,
        path: "pki/apiserver.crt".into(),
        reason,
    })?;
    reporter
        .step(&host, &format!("the apiserver serves its new certificate (until {})", summary.not_after.date_naive()));
    Ok(Reissued {
        host: master.ip,
        files: files.iter().map(|f| f.path.clone()).collect(),
        restarted,
        apiserver_not_after: summary.not_after,
    })
}

/// Whole days (at least one) the apiserver certificate on the host has left.
async fn remaining_days(session: &Session, host: IpAddr) -> Result<u32, CertError> {
    let path = "/etc/kubernetes/pki/apiserver.crt";
    let pem = session.run(&format!("cat {path}")).await?.stdout_text();
    let summary = pki::summarize(&pem).map_err(|reason| CertError::HostFile { host, path: path.into(), reason })?;
    let seconds = (summary.not_after - chrono::Utc::now()).num_seconds().max(0);
    Ok(u32::try_from((seconds + 86_399) / 86_400).unwrap_or(u32::MAX).clamp(1, 3650))
}

/// Waits until the apiserver on `host` (reached from the host itself, through the SSH
/// connection) completes a TLS handshake with exactly `expected_pem`, verified against the
/// cluster CA, and answers HTTP.
async fn wait_for_certificate(
    session: &Session,
    host: IpAddr,
    ca_pem: &str,
    expected_pem: &str,
) -> Result<(), CertError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let bad_pem =
        |what: &str| CertError::HostFile { host, path: what.to_owned(), reason: "not a PEM certificate".into() };
    let expected = CertificateDer::from_pem_slice(expected_pem.as_bytes()).map_err(|_| bad_pem("pki/apiserver.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| bad_pem("pki/ca.crt"))?)
        .map_err(|e| CertError::HostFile { host, path: "pki/ca.crt".into(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CertError::HostFile { host, path: "TLS".into(), reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::IpAddress(host.into());
    let started = Instant::now();
    let mut last = String::from("not tried yet");
    while started.elapsed() < RESTART_TIMEOUT {
        match probe(session, host, &connector, name.clone(), &expected).await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Err(CertError::NotRestarted { host, seconds: RESTART_TIMEOUT.as_secs(), last })
}

async fn probe(
    session: &Session,
    host: IpAddr,
    connector: &tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    expected: &rustls::pki_types::CertificateDer<'_>,
) -> Result<(), String> {
    let attempt = async {
        let stream = session.tunnel(&host.to_string(), APISERVER_PORT).await.map_err(|e| e.to_string())?;
        let mut tls = connector.connect(name, stream).await.map_err(|e| format!("TLS: {e}"))?;
        let served = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
        if served.as_deref() != Some(expected.as_ref()) {
            return Err("it still serves its previous certificate".to_owned());
        }
        tls.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).await.map_err(|e| format!("no HTTP answer: {e}"))?;
        if head.starts_with(b"HTTP/1.") { Ok(()) } else { Err("the answer is not HTTP".to_owned()) }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt).await.unwrap_or_else(|_| Err("no answer in 10 s".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reading_script_is_valid_shell() {
        let out =
            std::process::Command::new("sh").arg("-n").arg("-c").arg(read_certificates_script()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn the_reading_script_sends_certificates_but_never_keys() {
        // A fake /etc/kubernetes: one certificate, a kubeconfig with embedded data, and a
        // kubelet.conf pointing at a PEM file that holds a certificate and its key.
        let root = tempfile::tempdir().unwrap();
        let k8s = root.path().join("etc/kubernetes");
        std::fs::create_dir_all(k8s.join("pki")).unwrap();
        std::fs::write(k8s.join("pki/ca.crt"), "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n")
            .unwrap();
        let embedded = base64::engine::general_purpose::STANDARD.encode("ADMIN-CERT\n");
        std::fs::write(
            k8s.join("admin.conf"),
            format!("users:\n- user:\n    client-certificate-data: {embedded}\n    client-key-data: U0VDUkVU\n"),
        )
        .unwrap();
        let pem = root.path().join("kubelet-client-current.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nS1VCRUxFVA==\n-----END CERTIFICATE-----\n-----BEGIN RSA PRIVATE KEY-----\nS0VZ\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(k8s.join("kubelet.conf"), format!("    client-certificate: {}\n", pem.display())).unwrap();
        let script = read_certificates_script().replace("/etc/kubernetes", &k8s.display().to_string());
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(!listing.contains("PRIVATE KEY") && !listing.contains("U0VDUkVU"), "{listing}");
        let files = parse_listing(&listing);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["pki/ca.crt", "admin.conf", "kubelet.conf"]);
        assert_eq!(files[1].1, "ADMIN-CERT\n");
        assert!(files[2].1.contains("S1VCRUxFVA=="));
    }
}

//! Host keys: checked against a known_hosts file (OpenSSH format, hashed entries included).
//! Strict by default: an unknown key is refused with its fingerprint and how to accept it; a
//! changed key is always refused.

use std::path::PathBuf;
use std::sync::Arc;

use russh::client;
use russh::keys::PublicKey;
use tokio::sync::Mutex;

/// What to do with a key known_hosts does not have.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// Refuse it (the default).
    Strict { known_hosts: PathBuf },
    /// Record it and go on (`--accept-new-host-keys`); a changed key is still refused.
    AcceptNew { known_hosts: PathBuf },
}

impl HostKeyPolicy {
    fn path(&self) -> &PathBuf {
        match self {
            Self::Strict { known_hosts } | Self::AcceptNew { known_hosts } => known_hosts,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HostKeyProblem {
    #[error(
        "unknown host key {fingerprint} ({algorithm}); if it is right, run again with \
         `--accept-new-host-keys`, or add it to {known_hosts} (`ssh-keyscan -p {port} {host} >> {known_hosts}`)"
    )]
    Unknown { host: String, port: u16, fingerprint: String, algorithm: String, known_hosts: String },
    #[error(
        "the host key CHANGED: it is now {fingerprint}, but line {line} of {known_hosts} records another; \
         this may be an attack — if the host was reinstalled, remove that line"
    )]
    Changed { fingerprint: String, line: usize, known_hosts: String },
    #[error("cannot use {known_hosts}: {reason}")]
    File { known_hosts: String, reason: String },
}

/// russh's handler: decides on the server key and keeps the reason for a refusal.
pub struct Checker {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    problem: Arc<Mutex<Option<HostKeyProblem>>>,
}

impl Checker {
    pub fn new(host: &str, port: u16, policy: HostKeyPolicy) -> (Self, Arc<Mutex<Option<HostKeyProblem>>>) {
        let problem = Arc::new(Mutex::new(None));
        (Self { host: host.to_owned(), port, policy, problem: Arc::clone(&problem) }, problem)
    }

    fn decide(&self, key: &PublicKey) -> Result<(), HostKeyProblem> {
        let path = self.policy.path();
        let shown = path.display().to_string();
        let known = if path.exists() {
            russh::keys::check_known_hosts_path(&self.host, self.port, key, path).map_err(|e| match e {
                russh::keys::Error::KeyChanged { line } => {
                    HostKeyProblem::Changed { fingerprint: super::fingerprint(key), line, known_hosts: shown.clone() }
                }
                other => HostKeyProblem::File { known_hosts: shown.clone(), reason: other.to_string() },
            })?
        } else {
            false
        };
        if known {
            return Ok(());
        }
        match &self.policy {
            HostKeyPolicy::Strict { .. } => Err(HostKeyProblem::Unknown {
                host: self.host.clone(),
                port: self.port,
                fingerprint: super::fingerprint(key),
                algorithm: key.algorithm().to_string(),
                known_hosts: shown,
            }),
            HostKeyPolicy::AcceptNew { .. } => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| HostKeyProblem::File { known_hosts: shown.clone(), reason: e.to_string() })?;
                }
                russh::keys::known_hosts::learn_known_hosts_path(&self.host, self.port, key, path)
                    .map_err(|e| HostKeyProblem::File { known_hosts: shown, reason: e.to_string() })?;
                tracing::info!(host = %self.host, fingerprint = %super::fingerprint(key), "recorded new host key");
                Ok(())
            }
        }
    }
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        // A host certificate is judged by its key: kiln has no host CA configuration.
        match self.decide(&key.public_key()) {
            Ok(()) => Ok(true),
            Err(problem) => {
                *self.problem.lock().await = Some(problem);
                Ok(false)
            }
        }
    }
}

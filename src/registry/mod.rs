//! Registries: the OCI distribution client (`push`, `pull`, `login`, `logout`).
//!
//! [`Registry`] is the transport (TLS, auth challenges, token cache, retries); [`pull`] and
//! [`push`] move images between it and the local [`Store`](crate::image::Store); [`auth`]
//! reads and writes credentials. Progress goes out through [`TransferReporter`].

pub mod auth;
mod client;
pub mod layout;
mod locations;
mod pull;
mod push;
pub mod server;

pub use client::{Registry, RegistryError, TransportOptions};
pub use pull::{PlatformChoice, PullOutcome, PullRequest, pull};
pub use push::{PushOutcome, PushRequest, push};

use crate::image::Digest;

/// What happened to a blob during a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobEvent {
    /// Transfer starts; the size is the blob's.
    Start,
    /// This many more bytes moved.
    Progress,
    Done,
    /// Already at the destination: nothing moved.
    Present,
    /// Mounted from another repository of the same registry.
    Mounted,
}

/// Progress of blob transfers; implemented by the CLI's output.
pub trait TransferReporter: Send + Sync {
    /// `bytes` is the blob size for Start/Done/Present/Mounted and the increment for Progress.
    fn event(&self, digest: &Digest, bytes: u64, event: BlobEvent);
}

/// Drops all events.
pub struct NoReporter;

impl TransferReporter for NoReporter {
    fn event(&self, _: &Digest, _: u64, _: BlobEvent) {}
}

/// Checks `credential` against `registry` and saves it (mode 0600) only if it is accepted.
pub async fn login(
    opts: TransportOptions,
    registry_host: &str,
    credential: auth::Credential,
) -> Result<(), RegistryError> {
    let files = opts.auth_files.clone();
    let registry = Registry::new(opts)?;
    registry.set_credential(registry_host, credential.clone());
    registry.ping(registry_host).await?;
    files.store(registry_host, &credential)?;
    Ok(())
}

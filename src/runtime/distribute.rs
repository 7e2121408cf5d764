//! Distribution: each host gets its platform's rootfs under `<dataRoot>/<cluster>/rootfs`, the
//! `registry/` content only on registry hosts.
//!
//! Layer blobs travel as they are stored (compressed) into `<cluster>/.kiln/blobs/<sha256>`,
//! each checked by sha256 on the host before it is renamed into place, so a blob on a host is
//! never sent again. Layers are extracted in order into `rootfs.kiln-new` (a blob the host lacks
//! is unpacked while it arrives), which is swapped into place once all are whole;
//! `.kiln/rootfs.id` records which layers it was built from, so a re-run with nothing new sends
//! nothing and extracts nothing. Every
//! layer is checked on this machine first: an entry that could land outside the rootfs (an
//! absolute or `..` path, a hard link out, a write through an escaping symbolic link) is refused.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::image::layer::{self, ApplyError};
use crate::image::media::{self, Compression};
use crate::image::{Digest, PlatformImage, Store, StoreError};
use crate::ssh::{Session, SshError, quote};

/// Hears about bytes sent, per host.
pub trait DistributeReporter: Send + Sync {
    fn host_started(&self, host: &str, bytes_to_send: u64);
    fn sent(&self, host: &str, bytes: u64);
    fn host_done(&self, host: &str, outcome: &DistributeOutcome);
}

pub struct NoReporter;

impl DistributeReporter for NoReporter {
    fn host_started(&self, _: &str, _: u64) {}
    fn sent(&self, _: &str, _: u64) {}
    fn host_done(&self, _: &str, _: &DistributeOutcome) {}
}

#[derive(Debug, thiserror::Error)]
pub enum DistributeError {
    #[error("layer {digest} of the cluster image is unsafe to extract: {source}")]
    UnsafeLayer {
        digest: Digest,
        #[source]
        source: ApplyError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ssh(#[from] Box<SshError>),
    #[error(
        "{host}: the store's blob {digest} does not match its digest (sent {actual}); run `kiln rmi` and pull again"
    )]
    CorruptLocal { host: String, digest: Digest, actual: String },
}

impl From<SshError> for DistributeError {
    fn from(e: SshError) -> Self {
        Self::Ssh(Box::new(e))
    }
}

/// One layer to place on hosts.
#[derive(Debug, Clone)]
pub struct LayerToSend {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The `registry/` content: only for registry hosts.
    pub registry: bool,
    /// Paths to delete before extracting (whiteouts) and directories to empty (opaque).
    whiteouts: Vec<String>,
    opaque_dirs: Vec<String>,
}

/// The layers of one platform of the cluster image, checked and ready to send.
#[derive(Debug, Clone)]
pub struct RootfsPlan {
    pub layers: Vec<LayerToSend>,
}

impl RootfsPlan {
    /// Reads every layer once: containment checks and the whiteouts to apply on the host. The
    /// result is cached by manifest digest (layers never change), so a re-run reads nothing.
    pub fn new(store: &Store, image: &PlatformImage) -> Result<Self, DistributeError> {
        let cache = store.cache_dir().join("host-scan").join(format!("{}.json", image.manifest_digest.hex()));
        let scans: Vec<(Vec<String>, Vec<String>)> = match std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<(Vec<String>, Vec<String>)>>(&b).ok())
            .filter(|s| s.len() == image.manifest.layers().len())
        {
            Some(cached) => cached,
            None => {
                let mut symlinks = BTreeSet::new();
                let mut scans = Vec::new();
                for descriptor in image.manifest.layers() {
                    let digest = layer_digest(image, descriptor)?;
                    let media_type = descriptor.media_type().to_string();
                    let scan = layer::scan_for_host(layer::open_layer(store, &digest, &media_type)?, &mut symlinks)
                        .map_err(|source| DistributeError::UnsafeLayer { digest: digest.clone(), source })?;
                    scans.push((scan.whiteouts, scan.opaque_dirs));
                }
                if let Ok(bytes) = serde_json::to_vec(&scans) {
                    let _ = crate::image::store::write_atomic(&cache, &bytes);
                }
                scans
            }
        };
        let mut layers = Vec::new();
        for (descriptor, (whiteouts, opaque_dirs)) in image.manifest.layers().iter().zip(scans) {
            let registry = media::is_registry_layer(descriptor);
            layers.push(LayerToSend {
                digest: layer_digest(image, descriptor)?,
                media_type: descriptor.media_type().to_string(),
                size: descriptor.size(),
                registry,
                whiteouts,
                opaque_dirs,
            });
        }
        Ok(Self { layers })
    }

    fn for_host(&self, registry_host: bool) -> Vec<&LayerToSend> {
        self.layers.iter().filter(|l| registry_host || !l.registry).collect()
    }
}

fn layer_digest(image: &PlatformImage, descriptor: &oci_spec::image::Descriptor) -> Result<Digest, StoreError> {
    Digest::from_oci(descriptor.digest())
        .map_err(|e| StoreError::BadJson { digest: image.manifest_digest.clone(), reason: e.to_string() })
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DistributeOutcome {
    pub bytes_sent: u64,
    pub blobs_sent: usize,
    pub blobs_present: usize,
    /// The rootfs was (re)extracted; `false` when it already matched.
    pub rootfs_extracted: bool,
}

/// Where a cluster's files live on a host.
pub fn cluster_dir(data_root: &std::path::Path, cluster: &str) -> String {
    data_root.join(cluster).display().to_string()
}

/// The rootfs inside a cluster directory.
pub fn rootfs_dir(cluster_dir: &str) -> String {
    format!("{cluster_dir}/rootfs")
}

/// Places the rootfs for `plan` on one host.
pub async fn distribute(
    store: &Store,
    session: &Session,
    dir: &str,
    plan: &RootfsPlan,
    registry_host: bool,
    reporter: &dyn DistributeReporter,
) -> Result<DistributeOutcome, DistributeError> {
    let host = session.host().to_string();
    let layers = plan.for_host(registry_host);
    let blobs_dir = format!("{dir}/.kiln/blobs");
    let wanted_id = rootfs_id(&layers);
    let listing = session
        .run(&format!(
            "mkdir -p {b} && chmod 700 {d}/.kiln && rm -f {b}/*.kiln-part {b}/*.kiln-part.* && ls {b}; \
             echo \"id=$(cat {d}/.kiln/rootfs.id 2>/dev/null)\"; \
             [ -d {d}/rootfs ] && echo has-rootfs || true",
            b = quote(&blobs_dir),
            d = quote(dir)
        ))
        .await?
        .stdout_text();
    let present: BTreeSet<&str> = listing.lines().collect();
    let current_id = listing.lines().find_map(|l| l.strip_prefix("id=")).unwrap_or_default();
    let has_rootfs = present.contains("has-rootfs");
    let missing: Vec<&&LayerToSend> = layers.iter().filter(|l| !present.contains(l.digest.hex())).collect();
    let mut outcome = DistributeOutcome { blobs_present: layers.len() - missing.len(), ..Default::default() };
    reporter.host_started(&host, missing.iter().map(|l| l.size).sum());
    let sent = Arc::new(AtomicU64::new(0));
    let send = |l: &LayerToSend, unpack: Option<String>| {
        let (blobs_dir, host, sent) = (&blobs_dir, &host, Arc::clone(&sent));
        let (digest, media_type) = (l.digest.clone(), l.media_type.clone());
        async move {
            let path = store.blob_path(&digest);
            let file = tokio::fs::File::open(&path).await.map_err(|e| StoreError::io("open blob", &path, e))?;
            let reader = Counting { inner: file, host, sent, reporter };
            let remote = format!("{blobs_dir}/{}", digest.hex());
            let written = match &unpack {
                Some(into) => session.upload_through(reader, &remote, 0o600, &untar(&media_type, "-", into)).await,
                None => session.upload(reader, &remote, 0o600).await,
            };
            match written {
                Ok(actual) if actual == digest.hex() => Ok(()),
                Ok(actual) => {
                    let _ = session.exec(&format!("rm -f {}", quote(&remote))).await;
                    Err(DistributeError::CorruptLocal { host: host.clone(), digest, actual })
                }
                Err(e) => Err(e.into()),
            }
        }
    };
    if current_id != wanted_id || !has_rootfs {
        // Layers go in order into `rootfs.kiln-new`; a missing one is unpacked while it
        // arrives, so sending, hashing and extracting overlap. The new tree replaces the
        // rootfs only once every layer arrived whole.
        let new = format!("{dir}/rootfs.kiln-new");
        session.run(&format!("rm -rf {n} && mkdir -p {n}", n = quote(&new))).await?;
        for l in &layers {
            let removals = removals_script(&new, l);
            if !removals.is_empty() {
                session.run(&removals).await?;
            }
            if missing.iter().any(|m| m.digest == l.digest) {
                send(l, Some(new.clone())).await?;
            } else {
                let blob = format!("{blobs_dir}/{}", l.digest.hex());
                session.run(&untar(&l.media_type, &blob, &new)).await?;
            }
        }
        session.run(&swap_script(dir, &wanted_id)).await?;
        outcome.rootfs_extracted = true;
    } else {
        // The rootfs is current; only blobs to keep are missing (at most two at a time).
        let uploads: Vec<Result<(), DistributeError>> =
            futures_util::stream::iter(missing.iter()).map(|l| send(l, None)).buffer_unordered(2).collect().await;
        for u in uploads {
            u?;
        }
    }
    outcome.blobs_sent = missing.len();
    outcome.bytes_sent = sent.load(Ordering::Relaxed);
    reporter.host_done(&host, &outcome);
    Ok(outcome)
}

/// Names the exact layer list a rootfs was built from.
fn rootfs_id(layers: &[&LayerToSend]) -> String {
    let mut h = Sha256::new();
    for l in layers {
        h.update(l.digest.to_string().as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// The layer's whiteouts applied to the tree below it (GNU tar does not apply them).
fn removals_script(root: &str, layer: &LayerToSend) -> String {
    let mut s = String::new();
    if layer.opaque_dirs.is_empty() && layer.whiteouts.is_empty() {
        return s;
    }
    s.push_str(&format!("set -e\ncd {}\n", quote(root)));
    for opaque in &layer.opaque_dirs {
        s.push_str(&format!("[ -d {p} ] && find {p} -mindepth 1 -delete || true\n", p = quote(opaque)));
    }
    for gone in &layer.whiteouts {
        s.push_str(&format!("rm -rf {}\n", quote(gone)));
    }
    s
}

/// Extracts a layer (`source`: a blob path, or `-` for stdin) into `root`.
fn untar(media_type: &str, source: &str, root: &str) -> String {
    let decompress = match Compression::of_media_type(media_type) {
        Some(Compression::Gzip) => "-z",
        Some(Compression::Zstd) => "--zstd",
        _ => "",
    };
    let source = if source == "-" { "-".to_owned() } else { quote(source) };
    format!("tar -x {decompress} --numeric-owner -p --exclude='.wh.*' -f {source} -C {}", quote(root))
}

/// Swaps `rootfs.kiln-new` in for the rootfs and records which layers built it.
fn swap_script(dir: &str, id: &str) -> String {
    format!(
        "set -e\ncd /\nrm -rf {old}\nif [ -d {cur} ]; then mv {cur} {old}; fi\nmv {n} {cur}\nrm -rf {old}\n\
         echo {id} > {d}/.kiln/rootfs.id.tmp && mv {d}/.kiln/rootfs.id.tmp {d}/.kiln/rootfs.id\n",
        old = quote(&format!("{dir}/rootfs.kiln-old")),
        cur = quote(&rootfs_dir(dir)),
        n = quote(&format!("{dir}/rootfs.kiln-new")),
        d = quote(dir),
    )
}

/// Counts bytes read from a blob as they go out.
struct Counting<'a, R> {
    inner: R,
    host: &'a str,
    sent: Arc<AtomicU64>,
    reporter: &'a dyn DistributeReporter,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.sent.fetch_add(n, Ordering::Relaxed);
            self.reporter.sent(self.host, n);
        }
        poll
    }
}

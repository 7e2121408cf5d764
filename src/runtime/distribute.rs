//! Distribution: each host gets its platform's rootfs under `<dataRoot>/<cluster>/rootfs`, the
//! `registry/` content only on registry hosts.
//!
//! Layers are extracted in order into `rootfs.kiln-new`, which is swapped into place once all
//! are whole; `.kiln/rootfs.id` records which layers it was built from, so a re-run with nothing
//! new sends nothing and extracts nothing. A layer the host lacks is unpacked while it arrives,
//! in one of three forms ([`Form`]):
//! - as stored: the blob, kept in `<cluster>/.kiln/blobs/<sha256>` and never sent again;
//! - recompressed: a gzip layer's tar recompressed with zstd once on this machine
//!   ([`LayerSpool`]), for hosts with zstd (they unpack it several times faster than gzip, which
//!   a single host core does at 110-180 MB/s, slower than a 1 Gbit/s link carries raw bytes);
//!   kept as `<diff_id>.tar.zst`, its frames checksummed, so zstd checks it when it is unpacked
//!   again;
//! - raw: decompressed once here, and not kept (that would double the host's disk writes; a
//!   marker `<diff_id>.extracted` says the rootfs holds it, so only a rebuild of the rootfs
//!   sends it again). Raw wins where the link is faster than this machine recompresses (or,
//!   for hosts without zstd, than the host unpacks gzip).
//!
//! [`LayerTransfer::Auto`] measures each host and picks. What this machine makes is checked
//! against the layer's diff_id, and a blob sent as stored against its digest, before anything
//! of it is put into use on a host. Every layer is checked on this machine first: an entry
//! that could land outside the rootfs (an absolute or `..` path, a hard link out, a write
//! through an escaping symbolic link) is refused.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

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
        "{host}: the store's blob {digest} does not match its digest ({reason}); nothing of it was put into use; run `kiln rmi` and pull again"
    )]
    CorruptLocal { host: String, digest: Digest, reason: String },
    #[error("the store's blob {digest} cannot be read: {reason}")]
    UnreadableLocal { digest: Digest, reason: String },
}

impl From<SshError> for DistributeError {
    fn from(e: SshError) -> Self {
        Self::Ssh(Box::new(e))
    }
}

/// How layers should travel to hosts (`--layer-transfer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerTransfer {
    /// Measured per host: gzip layers recompressed for hosts with zstd, raw to hosts whose
    /// link is faster than that (or, without zstd, than the host unpacks gzip).
    #[default]
    Auto,
    /// As stored; the host decompresses.
    Compressed,
    /// gzip layers recompressed with zstd on this machine for hosts with zstd (others as
    /// stored): the bytes of gzip, unpacked several times faster.
    Recompressed,
    /// Decompressed on this machine; the host unpacks plain tar as it arrives and keeps no
    /// blob (more bytes on the wire, no decompression there).
    Raw,
}

/// How a host got its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sent {
    Compressed,
    Recompressed,
    Raw,
}

/// How one layer travels to one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Its blob, unchanged.
    Stored,
    /// Made from it on this machine.
    Made(Made),
}

/// What [`LayerSpool`] makes of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Made {
    /// Its tar recompressed with zstd.
    Zstd,
    /// Its tar.
    Tar,
}

impl Made {
    /// The media type of what the host receives.
    fn media_type(self) -> &'static str {
        match self {
            Made::Zstd => media::OCI_LAYER_ZSTD,
            Made::Tar => media::OCI_LAYER_TAR,
        }
    }
}

/// Below this many gzip bytes to send, [`LayerTransfer::Auto`] does not measure (that
/// would cost more than another form could save) and sends them as stored.
const AUTO_MEASURES_FROM: u64 = 128 << 20;

/// What [`LayerTransfer::Auto`] sends to measure a link, after a quarter as much unmeasured (a
/// fresh connection's first tens of MiB go slower while buffers and windows grow); also how
/// much of a layer it recompresses to measure this machine.
const PROBE_BYTES: u64 = 32 << 20;

/// zstd's fastest level above the negative ones: output about the size of gzip's default,
/// made several times faster than gzip makes it.
const RECOMPRESS_LEVEL: i32 = 1;

/// One layer to place on hosts.
#[derive(Debug, Clone)]
pub struct LayerToSend {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The digest and size of the uncompressed tar (the same as `digest`, `size` when the layer
    /// is stored uncompressed).
    pub diff_id: Digest,
    pub raw_size: u64,
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
        let scans: Vec<LayerScan> = match std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<LayerScan>>(&b).ok())
            .filter(|s| s.len() == image.manifest.layers().len())
        {
            Some(cached) => cached,
            None => {
                let mut symlinks = BTreeSet::new();
                let mut scans = Vec::new();
                for descriptor in image.manifest.layers() {
                    let digest = layer_digest(image, descriptor)?;
                    let media_type = descriptor.media_type().to_string();
                    let mut tar = CountingRead { inner: layer::open_layer(store, &digest, &media_type)?, count: 0 };
                    let unsafe_layer = |source| DistributeError::UnsafeLayer { digest: digest.clone(), source };
                    let scan = layer::scan_for_host(&mut tar, &mut symlinks).map_err(unsafe_layer)?;
                    // The padding after tar's end marker is part of the diff_id's bytes too.
                    std::io::copy(&mut tar, &mut std::io::sink()).map_err(|e| unsafe_layer(ApplyError::Read(e)))?;
                    scans.push(LayerScan {
                        whiteouts: scan.whiteouts,
                        opaque_dirs: scan.opaque_dirs,
                        raw_size: tar.count,
                    });
                }
                if let Ok(bytes) = serde_json::to_vec(&scans) {
                    let _ = crate::image::store::write_atomic(&cache, &bytes);
                }
                scans
            }
        };
        let diff_ids = image.config.rootfs().diff_ids();
        if diff_ids.len() != scans.len() {
            return Err(StoreError::BadJson {
                digest: image.config_digest.clone(),
                reason: format!("{} diff_ids for {} layers", diff_ids.len(), scans.len()),
            }
            .into());
        }
        let mut layers = Vec::new();
        for ((descriptor, scan), diff_id) in image.manifest.layers().iter().zip(scans).zip(diff_ids) {
            let diff_id = diff_id
                .parse::<Digest>()
                .map_err(|e| StoreError::BadJson { digest: image.config_digest.clone(), reason: e.to_string() })?;
            layers.push(LayerToSend {
                digest: layer_digest(image, descriptor)?,
                media_type: descriptor.media_type().to_string(),
                size: descriptor.size(),
                diff_id,
                raw_size: scan.raw_size,
                registry: media::is_registry_layer(descriptor),
                whiteouts: scan.whiteouts,
                opaque_dirs: scan.opaque_dirs,
            });
        }
        Ok(Self { layers })
    }

    /// What a host of this platform needs free: the unpacked rootfs and, when hosts keep
    /// layers, their blobs (a gzip layer may come recompressed: zstd's level 1 makes about 5 %
    /// more than gzip's default, so a tenth more is counted); the registry layer's share only
    /// on registry hosts.
    pub fn disk_need(&self, keep_layers: bool) -> DiskNeed {
        let kept = |l: &LayerToSend| match l.compression() {
            _ if !keep_layers => 0,
            Some(Compression::Gzip) => l.size + l.size / 10,
            _ => l.size,
        };
        let bytes = |l: &LayerToSend| l.raw_size + kept(l);
        DiskNeed {
            rootfs: self.layers.iter().filter(|l| !l.registry).map(bytes).sum(),
            registry: self.layers.iter().filter(|l| l.registry).map(bytes).sum(),
        }
    }

    fn for_host(&self, registry_host: bool) -> Vec<&LayerToSend> {
        self.layers.iter().filter(|l| registry_host || !l.registry).collect()
    }
}

/// Disk a host needs for a cluster image's rootfs, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskNeed {
    /// On every host.
    pub rootfs: u64,
    /// On registry hosts, besides.
    pub registry: u64,
}

/// The most any platform of `image` needs (each layer read once, then cached: this is also
/// where an unsafe layer is refused, before any host is reached).
pub fn disk_need(store: &Store, image: &crate::image::Image, keep_layers: bool) -> Result<DiskNeed, DistributeError> {
    let mut need = DiskNeed::default();
    for platform in &image.platforms {
        let n = RootfsPlan::new(store, platform)?.disk_need(keep_layers);
        need.rootfs = need.rootfs.max(n.rootfs);
        need.registry = need.registry.max(n.registry);
    }
    Ok(need)
}

/// What reading a layer once on this machine tells about it (cached per manifest).
#[derive(Serialize, serde::Deserialize)]
struct LayerScan {
    whiteouts: Vec<String>,
    opaque_dirs: Vec<String>,
    raw_size: u64,
}

impl LayerToSend {
    fn compression(&self) -> Option<Compression> {
        Compression::of_media_type(&self.media_type)
    }

    fn is_compressed(&self) -> bool {
        matches!(self.compression(), Some(Compression::Gzip | Compression::Zstd))
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
    /// How this host got its layers (`None` when nothing was sent).
    pub transfer: Option<Sent>,
    /// What `Auto` measured to choose, in bytes per second: the link, and the host's gunzip
    /// or this machine's recompression (uncompressed bytes).
    pub link_bytes_per_sec: Option<f64>,
    pub gunzip_bytes_per_sec: Option<f64>,
    pub recompress_bytes_per_sec: Option<f64>,
}

/// Where a cluster's files live on a host.
pub fn cluster_dir(data_root: &std::path::Path, cluster: &str) -> String {
    data_root.join(cluster).display().to_string()
}

/// The rootfs inside a cluster directory.
pub fn rootfs_dir(cluster_dir: &str) -> String {
    format!("{cluster_dir}/rootfs")
}

/// Places cluster image rootfs on hosts: one per distribution phase, shared by its hosts (they
/// share the decompressed layers of the spool).
pub struct Distributor<'a> {
    pub transfer: LayerTransfer,
    /// Hosts keep each layer they get as stored (`.kiln/blobs/`), so a rebuilt rootfs (a new
    /// image sharing layers) needs nothing sent again. Without, layers are only unpacked:
    /// less disk and fewer writes on the hosts, and a rebuild sends them again.
    pub keep_layers: bool,
    pub spool: &'a LayerSpool,
    pub reporter: &'a dyn DistributeReporter,
}

/// What a host holds of a cluster's layers, from one listing of its cluster directory.
pub struct HostHoldings {
    names: BTreeSet<String>,
    rootfs_id: String,
    has_rootfs: bool,
    has_zstd: bool,
}

impl HostHoldings {
    /// Lists `dir` on the host. With `tidy` (a run) it also creates the blob directory and
    /// removes what interrupted uploads left; without, nothing on the host changes (a plan).
    pub async fn read(session: &Session, dir: &str, tidy: bool) -> Result<Self, SshError> {
        let blobs = quote(&format!("{dir}/.kiln/blobs"));
        let d = quote(dir);
        let tidy = if tidy {
            format!("mkdir -p {blobs} && chmod 700 {d}/.kiln && rm -f {blobs}/*.kiln-part {blobs}/*.kiln-part.*; ")
        } else {
            String::new()
        };
        let listing = session
            .run(&format!(
                "{tidy}ls {blobs} 2>/dev/null; echo \"id=$(cat {d}/.kiln/rootfs.id 2>/dev/null)\"; \
                 [ -d {d}/rootfs ] && echo has-rootfs; command -v zstd >/dev/null && echo has-zstd; true"
            ))
            .await?
            .stdout_text();
        Ok(Self::parse(&listing))
    }

    fn parse(listing: &str) -> Self {
        let names: BTreeSet<String> = listing.lines().map(str::to_owned).collect();
        Self {
            rootfs_id: listing.lines().find_map(|l| l.strip_prefix("id=")).unwrap_or_default().to_owned(),
            has_rootfs: names.contains("has-rootfs"),
            has_zstd: names.contains("has-zstd"),
            names,
        }
    }

    /// Whether the rootfs must be (re)built to hold exactly the layers `wanted_id` names.
    pub fn needs_rebuild(&self, wanted_id: &str) -> bool {
        self.rootfs_id != wanted_id || !self.has_rootfs
    }

    fn held(&self, digest: &Digest, diff_id: &Digest) -> Option<Held> {
        if self.names.contains(digest.hex()) {
            Some(Held::Blob)
        } else if self.names.contains(&recompressed_name(diff_id)) {
            Some(Held::Recompressed)
        } else if self.names.contains(&extracted_marker(diff_id)) {
            Some(Held::Extracted)
        } else {
            None
        }
    }

    /// Whether the layer must be sent: a rebuild needs every layer without a blob here; a
    /// current rootfs only blobs to keep.
    pub fn lacks(&self, digest: &Digest, diff_id: &Digest, rebuild: bool) -> bool {
        match self.held(digest, diff_id) {
            None => true,
            Some(Held::Extracted) => rebuild,
            // Unpacked by zstd, which the host had when it got it.
            Some(Held::Recompressed) => rebuild && !self.has_zstd,
            Some(Held::Blob) => false,
        }
    }

    /// The file a rebuild unpacks the layer from, with its media type: `None` when it must be
    /// sent.
    fn unpack_source<'l>(&self, blobs_dir: &str, layer: &'l LayerToSend) -> Option<(String, &'l str)> {
        match self.held(&layer.digest, &layer.diff_id)? {
            Held::Blob => Some((format!("{blobs_dir}/{}", layer.digest.hex()), layer.media_type.as_str())),
            Held::Recompressed if self.has_zstd => {
                Some((format!("{blobs_dir}/{}", recompressed_name(&layer.diff_id)), media::OCI_LAYER_ZSTD))
            }
            Held::Recompressed | Held::Extracted => None,
        }
    }
}

/// A layer as a host holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Its blob, as stored here.
    Blob,
    /// Its tar recompressed with zstd (it came recompressed).
    Recompressed,
    /// Only in the rootfs (it came raw): present while that rootfs stands.
    Extracted,
}

impl Distributor<'_> {
    /// Places the rootfs for `plan` on one host.
    pub async fn distribute(
        &self,
        session: &Session,
        dir: &str,
        plan: &RootfsPlan,
        registry_host: bool,
    ) -> Result<DistributeOutcome, DistributeError> {
        let host = session.host().to_string();
        let layers = plan.for_host(registry_host);
        let blobs_dir = format!("{dir}/.kiln/blobs");
        let wanted_id = rootfs_id(layers.iter().map(|l| &l.digest));
        let holdings = HostHoldings::read(session, dir, true).await?;
        let rebuild = holdings.needs_rebuild(&wanted_id);
        // Hosts that keep no layers need nothing while their rootfs is current.
        let missing: Vec<&LayerToSend> = layers
            .iter()
            .copied()
            .filter(|l| holdings.lacks(&l.digest, &l.diff_id, rebuild) && (rebuild || self.keep_layers))
            .collect();
        let mut outcome = DistributeOutcome { blobs_present: layers.len() - missing.len(), ..Default::default() };

        // Only a rebuild takes layers in a form made here: a raw one is not kept, and a
        // current rootfs needs nothing but blobs to keep.
        let compressed_bytes: u64 = missing.iter().filter(|l| l.is_compressed()).map(|l| l.size).sum();
        // Only gzip is worth measuring: a host core unpacks zstd faster than links carry it.
        let gzip_layers = || missing.iter().filter(|l| l.compression() == Some(Compression::Gzip));
        let gzip_bytes: u64 = gzip_layers().map(|l| l.size).sum();
        let transfer = match self.transfer {
            _ if !rebuild || compressed_bytes == 0 => Sent::Compressed,
            LayerTransfer::Compressed => Sent::Compressed,
            LayerTransfer::Raw => Sent::Raw,
            LayerTransfer::Recompressed if gzip_bytes > 0 && holdings.has_zstd => Sent::Recompressed,
            LayerTransfer::Recompressed => Sent::Compressed,
            LayerTransfer::Auto if gzip_bytes < AUTO_MEASURES_FROM => Sent::Compressed,
            LayerTransfer::Auto => {
                let link = measure_link(session).await?;
                outcome.link_bytes_per_sec = Some(link);
                // Raw costs U / link; the others max(C / link, U / unpacking), C about a third
                // of U: raw wins once the link outruns the unpacking, which for hosts with zstd
                // is this machine's recompression (their zstd is faster still).
                if holdings.has_zstd {
                    let biggest = gzip_layers().max_by_key(|l| l.size).copied();
                    let rate = match biggest {
                        Some(layer) => self.spool.recompress_rate(layer).await,
                        None => 0.0,
                    };
                    outcome.recompress_bytes_per_sec = Some(rate);
                    if link > rate { Sent::Raw } else { Sent::Recompressed }
                } else if let Some(layer) = gzip_layers().max_by_key(|l| l.size) {
                    let gunzip = measure_gunzip(session, &*self.spool.gunzip_probe(layer).await?).await?;
                    outcome.gunzip_bytes_per_sec = Some(gunzip);
                    if link > gunzip { Sent::Raw } else { Sent::Compressed }
                } else {
                    Sent::Compressed
                }
            }
        };
        let form = |l: &LayerToSend| match l.compression() {
            _ if !rebuild => Form::Stored,
            // A host without zstd takes zstd layers raw whatever was chosen.
            Some(Compression::Zstd) if !holdings.has_zstd => Form::Made(Made::Tar),
            Some(Compression::Gzip | Compression::Zstd) if transfer == Sent::Raw => Form::Made(Made::Tar),
            Some(Compression::Gzip) if transfer == Sent::Recompressed => Form::Made(Made::Zstd),
            _ => Form::Stored,
        };
        if !missing.is_empty() {
            outcome.transfer = Some(transfer);
        }
        // A recompressed layer's size is known once it is made: about its gzip size.
        self.reporter.host_started(
            &host,
            missing.iter().map(|l| if form(l) == Form::Made(Made::Tar) { l.raw_size } else { l.size }).sum(),
        );

        let sent = Arc::new(AtomicU64::new(0));
        let send = |l: &LayerToSend, unpack: Option<String>| {
            let (blobs_dir, host, sent) = (&blobs_dir, &host, Arc::clone(&sent));
            let l = l.clone();
            let form = form(&l);
            async move {
                let reporter = self.reporter;
                // Raw layers are never kept; the others unless the hosts keep no layers.
                let keep = self.keep_layers && form != Form::Made(Made::Tar);
                let kept = match form {
                    Form::Made(Made::Zstd) => format!("{blobs_dir}/{}", recompressed_name(&l.diff_id)),
                    Form::Stored | Form::Made(Made::Tar) => format!("{blobs_dir}/{}", l.digest.hex()),
                };
                let part = format!("{kept}.kiln-part");
                let media_type = match form {
                    Form::Stored => l.media_type.as_str(),
                    Form::Made(made) => made.media_type(),
                };
                let untar = unpack.map(|into| untar(media_type, "-", &into));
                if let Form::Made(made) = form {
                    // Made here once for every host that takes this form, read while it is
                    // written; the spool ends their stream only once the whole tar matched its
                    // diff_id, else it fails them.
                    let source = Counting { inner: self.spool.reader(&l, made), host, sent, reporter };
                    session.pipe_unhashed(source, keep.then_some(part.as_str()), untar.as_deref()).await?;
                } else {
                    // As stored, carried unchanged by SSH and checked against its digest here
                    // while the first hosts receive it (once per run whatever the number of
                    // hosts); nothing is put into use on a host before that check passed.
                    let path = self.spool.store.blob_path(&l.digest);
                    let file = tokio::fs::File::open(&path).await.map_err(|e| StoreError::io("open blob", &path, e))?;
                    let source = Counting { inner: file, host, sent, reporter };
                    let (piped, checked) = tokio::join!(
                        session.pipe_unhashed(source, keep.then_some(part.as_str()), untar.as_deref()),
                        self.spool.verify_blob(&l),
                    );
                    // A bad blob is the cause of whatever the host made of it.
                    if let Err(failure) = checked {
                        if keep && piped.is_ok() {
                            let _ = session.run(&format!("rm -f {}", quote(&part))).await;
                        }
                        return Err(match failure {
                            BlobFailure::Corrupt(reason) => {
                                DistributeError::CorruptLocal { host: host.clone(), digest: l.digest.clone(), reason }
                            }
                            BlobFailure::Unreadable(reason) => {
                                DistributeError::UnreadableLocal { digest: l.digest.clone(), reason }
                            }
                        });
                    }
                    piped?;
                }
                // Held from now on: as a file kept, or as a marker that the rootfs holds it.
                let commit = if keep {
                    format!("chmod 600 {p} && mv -f {p} {k}", p = quote(&part), k = quote(&kept))
                } else {
                    format!(": > {}", quote(&format!("{blobs_dir}/{}", extracted_marker(&l.diff_id))))
                };
                session.run(&commit).await?;
                Ok(())
            }
        };
        if rebuild {
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
                match holdings.unpack_source(&blobs_dir, l) {
                    Some((file, media_type)) => {
                        session.run(&untar(media_type, &file, &new)).await?;
                    }
                    None => send(l, Some(new.clone())).await?,
                }
            }
            session.run(&swap_script(dir, &wanted_id)).await?;
            outcome.rootfs_extracted = true;
        } else {
            // The rootfs is current; only blobs to keep are missing (at most two at a time; a
            // host that got raw layers keeps none, so it gets nothing here).
            let uploads: Vec<Result<(), DistributeError>> =
                futures_util::stream::iter(missing.iter()).map(|l| send(l, None)).buffer_unordered(2).collect().await;
            for u in uploads {
                u?;
            }
        }
        outcome.blobs_sent = missing.len();
        outcome.bytes_sent = sent.load(Ordering::Relaxed);
        self.reporter.host_done(&host, &outcome);
        Ok(outcome)
    }
}

/// Layers made once on this machine for the hosts that take them raw or recompressed. One
/// thread writes each into a temporary file while any number of hosts read what is already
/// there, so a layer is decompressed (and recompressed) once however many hosts get it, and
/// sending starts at once. The files go with the spool.
pub struct LayerSpool {
    store: Store,
    dir: tempfile::TempDir,
    layers: std::sync::Mutex<HashMap<(Digest, Made), watch::Receiver<Spooled>>>,
    /// Blobs checked against their digest in this run (each once, however many hosts get it).
    checked: std::sync::Mutex<HashMap<Digest, Arc<BlobCheck>>>,
    /// How fast this machine recompresses, in tar bytes per second: measured once per run.
    recompress_rate: tokio::sync::OnceCell<f64>,
    /// What hosts without zstd unpack to measure their gunzip: read once per run.
    gunzip_probe: tokio::sync::OnceCell<Arc<GunzipProbe>>,
}

/// One blob's check, run once and awaited by every host that sends it.
type BlobCheck = tokio::sync::OnceCell<Result<(), BlobFailure>>;

/// Why a blob of the store cannot be sent.
#[derive(Debug, Clone)]
enum BlobFailure {
    /// Its content does not match its digest or size (how, from the store).
    Corrupt(String),
    Unreadable(String),
}

/// How far a layer's decompression has come.
#[derive(Debug, Clone)]
enum Spooled {
    Writing(u64),
    Done(u64),
    Failed(Arc<str>),
}

/// What one read of a spooled layer returns at most.
const SPOOL_CHUNK: u64 = 1 << 20;

impl LayerSpool {
    pub fn new(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            dir: store.scratch_dir("layer-spool-")?,
            layers: Default::default(),
            checked: Default::default(),
            recompress_rate: Default::default(),
            gunzip_probe: Default::default(),
        })
    }

    /// The start of `layer`'s blob for [`measure_gunzip`], read once per run.
    async fn gunzip_probe(&self, layer: &LayerToSend) -> Result<Arc<GunzipProbe>, DistributeError> {
        let (store, layer) = (self.store.clone(), layer.clone());
        let probe = self
            .gunzip_probe
            .get_or_try_init(|| async move {
                let digest = layer.digest.clone();
                tokio::task::spawn_blocking(move || GunzipProbe::read(&store, &layer).map(Arc::new))
                    .await
                    .map_err(|e| DistributeError::UnreadableLocal { digest, reason: e.to_string() })?
            })
            .await?;
        Ok(Arc::clone(probe))
    }

    /// How fast this machine recompresses gzip layers (tar bytes per second), measured once per
    /// run on the first [`PROBE_BYTES`] of `layer`'s tar: real content, since a made-up sample
    /// compresses at another speed than binaries do. 0 when the layer cannot be read (the
    /// spool reports why when it reads it).
    async fn recompress_rate(&self, layer: &LayerToSend) -> f64 {
        let (store, layer) = (self.store.clone(), layer.clone());
        *self
            .recompress_rate
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    use std::io::{Read as _, Write as _};
                    let started = std::time::Instant::now();
                    let mut tar = layer::open_layer(&store, &layer.digest, &layer.media_type).ok()?;
                    let mut zstd = recompressor(std::io::sink()).ok()?;
                    let mut chunk = vec![0; SPOOL_CHUNK as usize];
                    let mut done = 0u64;
                    while done < PROBE_BYTES {
                        let n = tar.read(&mut chunk).ok()?;
                        if n == 0 {
                            break;
                        }
                        zstd.write_all(&chunk[..n]).ok()?;
                        done += n as u64;
                    }
                    zstd.finish().ok()?;
                    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-6);
                    tracing::debug!(mb_per_sec = rate / 1e6, "recompression measured on {}", layer.digest);
                    Some(rate)
                })
                .await
                .ok()
                .flatten()
                .unwrap_or(0.0)
            })
            .await
    }

    /// Checks the layer's blob against its digest, once per run: hosts asking while the first
    /// check runs wait for its result.
    async fn verify_blob(&self, layer: &LayerToSend) -> Result<(), BlobFailure> {
        let cell = {
            let mut checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(checked.entry(layer.digest.clone()).or_default())
        };
        let (store, digest, size) = (self.store.clone(), layer.digest.clone(), layer.size);
        cell.get_or_init(|| async move {
            let started = std::time::Instant::now();
            let checked = {
                let digest = digest.clone();
                tokio::task::spawn_blocking(move || {
                    store.verify_blob(&digest, Some(size)).map_err(|e| match e {
                        StoreError::CorruptBlob { reason, .. } => BlobFailure::Corrupt(reason),
                        other => BlobFailure::Unreadable(other.to_string()),
                    })
                })
                .await
                .unwrap_or_else(|e| Err(BlobFailure::Unreadable(e.to_string())))
            };
            tracing::debug!(ms = started.elapsed().as_millis() as u64, ok = checked.is_ok(), "checked blob {digest}");
            checked
        })
        .await
        .clone()
    }

    /// What is made of the layer, read while it is being written.
    fn reader(&self, layer: &LayerToSend, made: Made) -> impl AsyncRead + Send + Unpin + 'static {
        tail(self.path(layer, made), self.start(layer, made))
    }

    fn path(&self, layer: &LayerToSend, made: Made) -> std::path::PathBuf {
        self.dir.path().join(match made {
            Made::Zstd => recompressed_name(&layer.diff_id),
            Made::Tar => format!("{}.tar", layer.diff_id.hex()),
        })
    }

    /// Starts making `made` of `layer` unless that already began: from the other form when
    /// that is being made (hosts on different links may take different forms; a layer is
    /// decompressed once per run all the same), else from the blob.
    fn start(&self, layer: &LayerToSend, made: Made) -> watch::Receiver<Spooled> {
        let mut layers = self.layers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (layer.diff_id.clone(), made);
        if let Some(progress) = layers.get(&key) {
            return progress.clone();
        }
        let other = match made {
            Made::Zstd => Made::Tar,
            Made::Tar => Made::Zstd,
        };
        let from = layers.get(&(layer.diff_id.clone(), other)).map(|progress| {
            let reader: Box<dyn AsyncRead + Send + Unpin> = Box::new(tail(self.path(layer, other), progress.clone()));
            Sibling { made: other, tail: tokio_util::io::SyncIoBridge::new(reader) }
        });
        let (progress, watching) = watch::channel(Spooled::Writing(0));
        layers.insert(key, watching.clone());
        let (store, layer, path) = (self.store.clone(), layer.clone(), self.path(layer, made));
        tokio::task::spawn_blocking(move || {
            let end = match decompress_into(&store, &layer, from, made, &path, &progress) {
                Ok(size) => Spooled::Done(size),
                Err(reason) => Spooled::Failed(reason.into()),
            };
            progress.send_replace(end);
        });
        watching
    }
}

/// A spooled file read while it is written: its stream ends once it is done (checked), or fails
/// with its failure.
fn tail(path: std::path::PathBuf, progress: watch::Receiver<Spooled>) -> impl AsyncRead + Send + Unpin + 'static {
    struct Tail {
        path: std::path::PathBuf,
        progress: watch::Receiver<Spooled>,
        file: Option<tokio::fs::File>,
        position: u64,
    }
    let tail = Tail { path, progress, file: None, position: 0 };
    let chunks = futures_util::stream::try_unfold(tail, |mut tail| async move {
        loop {
            let (written, finished) = match &*tail.progress.borrow_and_update() {
                Spooled::Writing(n) => (*n, false),
                Spooled::Done(n) => (*n, true),
                Spooled::Failed(reason) => return Err(std::io::Error::other(reason.to_string())),
            };
            if tail.position < written {
                let file = match &mut tail.file {
                    Some(file) => file,
                    None => tail.file.insert(tokio::fs::File::open(&tail.path).await?),
                };
                let mut chunk = vec![0; (written - tail.position).min(SPOOL_CHUNK) as usize];
                let n = file.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "spooled layer shrank"));
                }
                chunk.truncate(n);
                tail.position += n as u64;
                return Ok(Some((bytes::Bytes::from(chunk), tail)));
            }
            if finished {
                return Ok(None);
            }
            tail.progress.changed().await.map_err(|_| std::io::Error::other("layer decompression stopped"))?;
        }
    });
    tokio_util::io::StreamReader::new(Box::pin(chunks))
}

/// The other form of a layer, being made in this run: what a new one is made from (read on the
/// spool's blocking thread).
struct Sibling {
    made: Made,
    tail: tokio_util::io::SyncIoBridge<Box<dyn AsyncRead + Send + Unpin>>,
}

/// A zstd stream of what is written, made as [`Made::Zstd`] is: frames checksummed (the host's
/// zstd checks them whenever it unpacks the kept file), on this machine's cores.
fn recompressor<W: std::io::Write>(out: W) -> std::io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut zstd = zstd::stream::write::Encoder::new(out, RECOMPRESS_LEVEL)?;
    zstd.include_checksum(true)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    zstd.multithread(workers as u32)?;
    Ok(zstd)
}

/// Where the spool writes a layer: the file, or zstd into the file.
enum SpoolOut {
    Tar(CountingWrite<std::fs::File>),
    Zstd(zstd::stream::write::Encoder<'static, CountingWrite<std::fs::File>>),
}

impl SpoolOut {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        match self {
            SpoolOut::Tar(file) => file.write_all(bytes),
            SpoolOut::Zstd(zstd) => zstd.write_all(bytes),
        }
    }

    /// Bytes in the file so far: what readers may read.
    fn written(&self) -> u64 {
        match self {
            SpoolOut::Tar(file) => file.count,
            SpoolOut::Zstd(zstd) => zstd.get_ref().count,
        }
    }

    /// Ends the stream; the file's whole size.
    fn finish(self) -> std::io::Result<u64> {
        match self {
            SpoolOut::Tar(file) => Ok(file.count),
            SpoolOut::Zstd(zstd) => Ok(zstd.finish()?.count),
        }
    }
}

/// Writes the layer's tar (for [`Made::Zstd`], recompressed) to `path`, reporting progress, and
/// checks the tar against the diff_id: readers' streams end only after that check passed. The
/// tar comes from the blob, or from the other form `from` (zstd unpacks several times faster
/// than gzip).
fn decompress_into(
    store: &Store,
    layer: &LayerToSend,
    from: Option<Sibling>,
    made: Made,
    path: &std::path::Path,
    progress: &watch::Sender<Spooled>,
) -> Result<u64, String> {
    use std::io::Read as _;
    let mut tar: Box<dyn std::io::Read> = match from {
        None => layer::open_layer(store, &layer.digest, &layer.media_type).map_err(|e| e.to_string())?,
        Some(Sibling { made: Made::Tar, tail }) => Box::new(tail),
        Some(Sibling { made: Made::Zstd, tail }) => {
            Box::new(zstd::stream::read::Decoder::new(tail).map_err(|e| format!("start zstd: {e}"))?)
        }
    };
    let file = std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let file = CountingWrite { inner: file, count: 0 };
    let mut out = match made {
        Made::Zstd => SpoolOut::Zstd(recompressor(file).map_err(|e| format!("start zstd: {e}"))?),
        Made::Tar => SpoolOut::Tar(file),
    };
    let mut hasher = Sha256::new();
    let mut chunk = vec![0; SPOOL_CHUNK as usize];
    loop {
        let n = tar.read(&mut chunk).map_err(|e| format!("decompress layer {}: {e}", layer.digest))?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        out.write_all(&chunk[..n]).map_err(|e| format!("write {}: {e}", path.display()))?;
        progress.send_replace(Spooled::Writing(out.written()));
    }
    let written = out.finish().map_err(|e| format!("write {}: {e}", path.display()))?;
    let actual = Digest::from_sha256(hasher);
    if actual != layer.diff_id {
        return Err(format!(
            "layer {} decompresses to {actual}, not its diff_id {}; run `kiln rmi` and pull again",
            layer.digest, layer.diff_id
        ));
    }
    Ok(written)
}

/// Measures a host's link (zeros to `/dev/null`) in bytes per second.
async fn measure_link(session: &Session) -> Result<f64, DistributeError> {
    let zeros = |n: u64| tokio::io::repeat(0).take(n);
    session.timed_pipe("cat > /dev/null", zeros(PROBE_BYTES / 4)).await?;
    let took = session.timed_pipe("cat > /dev/null", zeros(PROBE_BYTES)).await?;
    Ok(PROBE_BYTES as f64 / took.as_secs_f64().max(1e-6))
}

/// Measures a host's gunzip on the start of a gzip layer (`probe`), in uncompressed bytes per
/// second.
async fn measure_gunzip(session: &Session, probe: &GunzipProbe) -> Result<f64, DistributeError> {
    let took = session.timed_pipe(GUNZIP_PROBE_COMMAND, &probe.compressed[..]).await?.as_secs_f64();
    Ok(probe.unpacked as f64 / took.max(1e-6))
}

/// The probe ends mid-stream, which gzip reports (status 1) after unpacking all of it; a
/// missing gzip (127) fails.
const GUNZIP_PROBE_COMMAND: &str = "gzip -dc > /dev/null 2>&1; [ $? -le 1 ]";

/// How much of a gzip blob [`measure_gunzip`] sends.
const GUNZIP_PROBE_BYTES: u64 = 8 << 20;

/// The start of a gzip layer's blob and what it unpacks to: real content, since a made-up
/// sample unpacks at another speed than binaries do.
struct GunzipProbe {
    compressed: Vec<u8>,
    unpacked: u64,
}

impl GunzipProbe {
    fn read(store: &Store, layer: &LayerToSend) -> Result<Self, DistributeError> {
        use std::io::Read as _;
        let path = store.blob_path(&layer.digest);
        let unreadable = |e: std::io::Error| DistributeError::UnreadableLocal {
            digest: layer.digest.clone(),
            reason: format!("{}: {e}", path.display()),
        };
        let mut compressed = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(GUNZIP_PROBE_BYTES).read_to_end(&mut compressed))
            .map_err(unreadable)?;
        let mut unpacked = CountingWrite { inner: std::io::sink(), count: 0 };
        // Ends with an error where the prefix ends; what came before counts.
        let _ = std::io::copy(&mut flate2::read::MultiGzDecoder::new(&compressed[..]), &mut unpacked);
        Ok(Self { compressed, unpacked: unpacked.count })
    }
}

/// Counts bytes written (the probe's unpacked size, the spool's file).
struct CountingWrite<W> {
    inner: W,
    count: u64,
}

impl<W: std::io::Write> std::io::Write for CountingWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The file that says a raw layer is in the rootfs (it has no blob on the host).
fn extracted_marker(diff_id: &Digest) -> String {
    format!("{}.extracted", diff_id.hex())
}

/// The file a host keeps a recompressed layer in (named by its tar: it is not the image's blob).
fn recompressed_name(diff_id: &Digest) -> String {
    format!("{}.tar.zst", diff_id.hex())
}

/// Names the exact layer list a rootfs was built from.
pub fn rootfs_id<'a>(layers: impl IntoIterator<Item = &'a Digest>) -> String {
    let mut h = Sha256::new();
    for digest in layers {
        h.update(digest.to_string().as_bytes());
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
    let extract = |options: &str, source: &str| {
        format!("tar -x {options} --numeric-owner -p --exclude='.wh.*' -f {source} -C {}", quote(root))
    };
    if source != "-" {
        return extract(decompress, &quote(source));
    }
    // From a pipe, big records with short reads reassembled (-B) save most of tar's syscalls,
    // and the decompressor runs beside tar rather than behind a tar child that feeds it (one
    // copy and two context switches less per block). Its status is kept in a file, since not
    // every sh has pipefail.
    let tool = match Compression::of_media_type(media_type) {
        Some(Compression::Gzip) => "gzip -dc",
        Some(Compression::Zstd) => "zstd -dcq",
        _ => return extract("-B -b 256", "-"),
    };
    format!(
        "st=$(mktemp) && {{ {{ {tool}; echo $? > \"$st\"; }} | {}; r=$?; z=$(cat \"$st\"); rm -f \"$st\"; [ $r = 0 ] && [ \"$z\" = 0 ]; }}",
        extract("-B -b 256", "-")
    )
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

/// Counts bytes read on this machine.
struct CountingRead<R> {
    inner: R,
    count: u64,
}

impl<R: std::io::Read> std::io::Read for CountingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A gzip layer in a fresh store, with its plain tar.
    fn gzip_layer(store: &Store, raw: &[u8], diff_id: Digest) -> LayerToSend {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(raw).unwrap();
        let (digest, size) = store.write_blob(&gz.finish().unwrap()).unwrap();
        LayerToSend {
            digest,
            media_type: media::OCI_LAYER_GZIP.to_owned(),
            size,
            diff_id,
            raw_size: raw.len() as u64,
            registry: false,
            whiteouts: vec![],
            opaque_dirs: vec![],
        }
    }

    async fn read_all(mut reader: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn spooled_layer_is_decompressed_once_and_read_by_many_while_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Several spool chunks, so readers overlap the writer.
        let raw: Vec<u8> = (0..5 * SPOOL_CHUNK as usize + 12_345).map(|i| (i * 31 % 251) as u8).collect();
        let layer = gzip_layer(&store, &raw, Digest::of(&raw));
        let spool = LayerSpool::new(&store).unwrap();
        let readers: Vec<_> = (0..4).map(|_| read_all(spool.reader(&layer, Made::Tar))).collect();
        for got in futures_util::future::join_all(readers).await {
            assert!(got.unwrap() == raw, "a reader got other bytes than the layer's tar");
        }
        // One file for the layer, however many readers.
        assert_eq!(std::fs::read_dir(spool.dir.path()).unwrap().count(), 1);
        // A later reader (the layer already whole) gets the same.
        assert!(read_all(spool.reader(&layer, Made::Tar)).await.unwrap() == raw);
        let spool_dir = spool.dir.path().to_owned();
        drop(spool);
        assert!(!spool_dir.exists(), "the spool outlived its run");
    }

    #[tokio::test]
    async fn recompressed_layer_is_made_once_as_checksummed_zstd_of_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let raw: Vec<u8> = (0..6 * SPOOL_CHUNK as usize + 999).map(|i| ((i / 7) * 13 % 251) as u8).collect();
        let layer = gzip_layer(&store, &raw, Digest::of(&raw));
        let spool = LayerSpool::new(&store).unwrap();
        let readers = (0..3).map(|_| read_all(spool.reader(&layer, Made::Zstd)));
        let streams: Vec<Vec<u8>> =
            futures_util::future::join_all(readers).await.into_iter().map(Result::unwrap).collect();
        assert!(streams.windows(2).all(|w| w[0] == w[1]), "readers got different streams");
        assert!(zstd::decode_all(&streams[0][..]).unwrap() == raw, "the stream is not the layer's tar");
        assert!(streams[0].len() < raw.len() / 2, "{} bytes of zstd for {} of tar", streams[0].len(), raw.len());
        // The frame carries a content checksum: a damaged copy does not unpack.
        let mut damaged = streams[0].clone();
        let n = damaged.len();
        damaged[n - 2] ^= 0x55;
        assert!(zstd::decode_all(&damaged[..]).is_err(), "a damaged stream unpacked");
        // One file per form: the tar form is made apart.
        assert!(read_all(spool.reader(&layer, Made::Tar)).await.unwrap() == raw);
        assert_eq!(std::fs::read_dir(spool.dir.path()).unwrap().count(), 2);
        assert!(spool.recompress_rate(&layer).await > 0.0);
    }

    /// Hosts that take different forms of a layer in one run: the second form is made from the
    /// first, not from the blob again (gone here, so only that can work).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_form_is_made_from_the_first() {
        for (first, second) in [(Made::Tar, Made::Zstd), (Made::Zstd, Made::Tar)] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let raw: Vec<u8> = (0..4 * SPOOL_CHUNK as usize + 77).map(|i| ((i / 5) * 7 % 253) as u8).collect();
            let layer = gzip_layer(&store, &raw, Digest::of(&raw));
            let spool = LayerSpool::new(&store).unwrap();
            let first_bytes = read_all(spool.reader(&layer, first)).await.unwrap();
            std::fs::remove_file(store.blob_path(&layer.digest)).unwrap();
            let second_bytes = read_all(spool.reader(&layer, second)).await.unwrap();
            let (tar, zst) = if first == Made::Tar { (first_bytes, second_bytes) } else { (second_bytes, first_bytes) };
            assert!(tar == raw, "{first:?} then {second:?}: the tar differs");
            assert!(zstd::decode_all(&zst[..]).unwrap() == raw, "{first:?} then {second:?}: the zstd is not the tar");
        }
    }

    #[tokio::test]
    async fn layer_made_here_not_matching_its_diff_id_fails_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let raw = vec![7u8; 3 * SPOOL_CHUNK as usize];
        let layer = gzip_layer(&store, &raw, Digest::of(b"something else"));
        let spool = LayerSpool::new(&store).unwrap();
        for made in [Made::Tar, Made::Zstd] {
            for got in futures_util::future::join_all((0..2).map(|_| read_all(spool.reader(&layer, made)))).await {
                let error = got.unwrap_err().to_string();
                assert!(error.contains("not its diff_id"), "{made:?}: {error}");
            }
        }
    }

    /// The probe is the start of the blob and counts what that unpacks to; gzip unpacks it as
    /// the hosts run it (the status of a stream cut short is not a failure; no gzip is).
    #[test]
    fn gunzip_probe_is_the_start_of_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Barely compressible, so the blob is longer than the probe.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let raw: Vec<u8> = (0..(GUNZIP_PROBE_BYTES + (2 << 20)))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let layer = gzip_layer(&store, &raw, Digest::of(&raw));
        let probe = GunzipProbe::read(&store, &layer).unwrap();
        assert_eq!(probe.compressed.len() as u64, GUNZIP_PROBE_BYTES);
        let blob = std::fs::read(store.blob_path(&layer.digest)).unwrap();
        assert!(blob.starts_with(&probe.compressed));
        // All but the last part-block of what the prefix holds.
        assert!(
            probe.unpacked > GUNZIP_PROBE_BYTES - (1 << 20) && probe.unpacked <= GUNZIP_PROBE_BYTES,
            "{}",
            probe.unpacked
        );
        let run = |command: &str| {
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // Without gzip nothing reads it.
            let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), &probe.compressed);
            child.wait().unwrap().success()
        };
        assert!(run(GUNZIP_PROBE_COMMAND));
        assert!(!run(&GUNZIP_PROBE_COMMAND.replace("gzip", "no-such-gzip")));
    }

    #[test]
    fn disk_need_counts_a_kept_gzip_layer_as_it_may_come_recompressed() {
        let layer = |media_type: &str, size: u64, registry: bool| LayerToSend {
            digest: Digest::of(media_type.as_bytes()),
            media_type: media_type.to_owned(),
            size,
            diff_id: Digest::of(b"tar"),
            raw_size: 3 * size,
            registry,
            whiteouts: vec![],
            opaque_dirs: vec![],
        };
        let plan = RootfsPlan {
            layers: vec![
                layer(media::OCI_LAYER_GZIP, 1000, false),
                layer(media::OCI_LAYER_ZSTD, 100, false),
                layer(media::OCI_LAYER_TAR, 10, true),
            ],
        };
        assert_eq!(plan.disk_need(true), DiskNeed { rootfs: 3000 + 1100 + 300 + 100, registry: 30 + 10 });
        assert_eq!(plan.disk_need(false), DiskNeed { rootfs: 3000 + 300, registry: 30 });
    }

    #[test]
    fn holdings_decide_what_a_run_and_a_plan_send() {
        let (blob, raw) = (Digest::of(b"kept blob"), Digest::of(b"kept tar"));
        let (came_raw, diff) = (Digest::of(b"came raw"), Digest::of(b"came raw tar"));
        let absent = Digest::of(b"absent");
        let id = rootfs_id([&blob, &came_raw, &absent]);
        let listing = format!("{}\n{}\nid={id}\nhas-rootfs\n", blob.hex(), extracted_marker(&diff));
        let holdings = HostHoldings::parse(&listing);
        assert!(!holdings.needs_rebuild(&id));
        assert!(holdings.needs_rebuild(&rootfs_id([&blob])), "another layer list is a rebuild");
        assert!(!holdings.has_zstd);
        // A current rootfs: only layers with neither blob nor marker are sent (blobs to keep).
        assert!(!holdings.lacks(&blob, &raw, false));
        assert!(!holdings.lacks(&came_raw, &diff, false));
        assert!(holdings.lacks(&absent, &absent, false));
        // A rebuild also needs what only the old rootfs held.
        assert!(!holdings.lacks(&blob, &raw, true));
        assert!(holdings.lacks(&came_raw, &diff, true));
        // No rootfs directory: a rebuild whatever the id says.
        assert!(HostHoldings::parse(&format!("id={id}\nhas-zstd\n")).needs_rebuild(&id));
        // A layer that came recompressed is kept, and unpacked from there while zstd is there.
        let layer = LayerToSend {
            digest: Digest::of(b"gzip blob"),
            media_type: media::OCI_LAYER_GZIP.to_owned(),
            size: 1,
            diff_id: Digest::of(b"its tar"),
            raw_size: 2,
            registry: false,
            whiteouts: vec![],
            opaque_dirs: vec![],
        };
        let kept = format!("{}\nhas-rootfs\n", recompressed_name(&layer.diff_id));
        let with_zstd = HostHoldings::parse(&format!("{kept}has-zstd\n"));
        assert!(!with_zstd.lacks(&layer.digest, &layer.diff_id, true));
        assert_eq!(
            with_zstd.unpack_source("/b", &layer),
            Some((format!("/b/{}.tar.zst", layer.diff_id.hex()), media::OCI_LAYER_ZSTD))
        );
        let without = HostHoldings::parse(&kept);
        assert!(without.lacks(&layer.digest, &layer.diff_id, true) && without.unpack_source("/b", &layer).is_none());
        assert!(!without.lacks(&layer.digest, &layer.diff_id, false), "a current rootfs needs it not");
    }

    #[test]
    fn untar_decompresses_by_media_type() {
        assert!(untar(media::OCI_LAYER_GZIP, "-", "/r").contains("gzip -dc"));
        assert!(untar(media::OCI_LAYER_ZSTD, "-", "/r").contains("zstd -dcq"));
        assert!(untar(media::OCI_LAYER_ZSTD, "/b/x", "/r").contains("--zstd"));
        assert!(untar(media::OCI_LAYER_GZIP, "/b/x", "/r").contains(" -z "));
        let plain = untar(media::OCI_LAYER_TAR, "/b/x", "/r");
        assert!(!plain.contains(" -z ") && !plain.contains("zstd"), "{plain}");
    }

    /// The pipeline as a host runs it: a good gzip stream unpacks; a damaged one fails even
    /// where tar alone would not notice (the decompressor's status counts).
    #[test]
    fn streamed_untar_fails_when_the_decompressor_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        tar.append_data(&mut header, "hello", &b"hi\n"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let good = gz.finish().unwrap();
        let run = |bytes: &[u8], root: &std::path::Path| {
            std::fs::create_dir_all(root).unwrap();
            let script = untar(media::OCI_LAYER_GZIP, "-", &root.display().to_string());
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes);
            child.wait().unwrap().success()
        };
        assert!(run(&good, &dir.path().join("good")));
        assert_eq!(std::fs::read(dir.path().join("good/hello")).unwrap(), b"hi\n");
        // The whole tar, then a damaged gzip trailer: tar is content, gzip is not.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 5] ^= 0xff;
        assert!(!run(&bad, &dir.path().join("bad")));
    }
}

//! The offline step of a build: every container image the cluster image needs is pulled (for
//! every built platform) into the store, which doubles as a blob cache shared by all builds, and
//! written as one layer holding `registry/` in the docker-distribution layout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;

use super::collect::{Discovery, FoundImage};
use super::sources::{ImageSource, LocalSources, SourceError};
use crate::image::layer::{EntryOptions, LayerBlob, LayerWriter};
use crate::image::media::Compression;
use crate::image::store::write_atomic;
use crate::image::{Digest, ImageRef, IndexEntry, Platform, Store, StoreError};
use crate::registry::layout::{self, Entry, LayoutImage};
use crate::registry::{NoReporter, PlatformChoice, PullRequest, Registry, RegistryError, TransportOptions};

/// How the build finds and fetches container images (absent: `--build-mode lite`).
#[derive(Debug, Clone)]
pub struct OfflineOptions {
    pub image_lists: Vec<PathBuf>,
    pub ignored_lists: Vec<PathBuf>,
    /// Images pulled at once (`--max-pull-procs`).
    pub max_pulls: usize,
    pub transport: TransportOptions,
    /// Local sources tried before any registry (`--image-source`).
    pub sources: Vec<ImageSource>,
}

/// A container image placed in the registry layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedImage {
    pub image: String,
    pub digest: String,
    pub platforms: Vec<String>,
    /// Files that referenced it.
    pub sources: Vec<String>,
    /// Where its content came from: `registry HOST`, `archive PATH` or `containerd:NAMESPACE`.
    pub origin: String,
    #[serde(rename = "appName", skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("container image `{image}` (referenced by {}) could not be fetched", sources.join(", "))]
    Fetch {
        image: String,
        sources: Vec<String>,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("container image `{image}` (referenced by {})", sources.join(", "))]
    Local {
        image: String,
        sources: Vec<String>,
        #[source]
        source: Box<SourceError>,
    },
    #[error(transparent)]
    Source(#[from] Box<SourceError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] Box<RegistryError>),
}

impl From<RegistryError> for OfflineError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(Box::new(e))
    }
}

fn known_path(store: &Store, image: &str) -> PathBuf {
    store.cache_dir().join("images").join(format!("{}.json", blake3::hash(image.as_bytes()).to_hex()))
}

/// Pulls every found image for `platforms` and returns the registry layer and what it holds.
pub fn cache_images(
    store: &Store,
    found: &Discovery,
    platforms: &[Platform],
    options: &OfflineOptions,
) -> Result<Option<(LayerBlob, Vec<CachedImage>)>, OfflineError> {
    // Opened even when nothing is to be cached (a base may hold every image): a source that is
    // not an image archive is the user's mistake either way.
    let local = LocalSources::open(store, &options.sources).map_err(Box::new)?;
    if found.images.is_empty() {
        return Ok(None);
    }
    let registry = Registry::new(options.transport.clone())?;
    let handle = tokio::runtime::Handle::current();
    let fetched: Vec<Result<(FoundImage, IndexEntry, String), OfflineError>> = handle.block_on(async {
        futures_util::stream::iter(found.images.iter().cloned())
            .map(|f| {
                let (registry, local) = (&registry, &local);
                async move {
                    let source: ImageRef =
                        f.image.parse().map_err(|e: crate::image::ImageRefError| OfflineError::Fetch {
                            image: f.image.clone(),
                            sources: f.sources.clone(),
                            source: Box::new(RegistryError::Protocol(e.to_string())),
                        })?;
                    match local.find(store, &source, platforms).await {
                        Ok(Some(hit)) => return Ok((f, hit.entry, hit.origin)),
                        Ok(None) => {}
                        Err(e) => {
                            return Err(OfflineError::Local {
                                image: f.image.clone(),
                                sources: f.sources.clone(),
                                source: Box::new(e),
                            });
                        }
                    }
                    let origin = format!("registry {}", source.registry());
                    let outcome = pull_for_build(registry, store, source, platforms, &f).await?;
                    let digest: Digest = outcome
                        .digest
                        .parse()
                        .map_err(|e: crate::image::DigestError| RegistryError::Protocol(e.to_string()))?;
                    let _ = write_atomic(&known_path(store, &f.image), outcome.digest.as_bytes());
                    let entry = IndexEntry { name: None, digest, media_type: outcome.media_type, size: outcome.size };
                    Ok((f, entry, origin))
                }
            })
            .buffer_unordered(options.max_pulls.max(1))
            .collect()
            .await
    });
    let mut layout_images = Vec::new();
    let mut cached = Vec::new();
    for result in fetched {
        let (found, entry, origin) = result?;
        let digest = entry.digest.clone();
        let image = store.image_at(entry)?;
        let reference: ImageRef =
            found.image.parse().map_err(|e: crate::image::ImageRefError| RegistryError::Protocol(e.to_string()))?;
        let mut manifests = vec![digest.clone()];
        let mut layers = Vec::new();
        for (d, _, media_type) in image.blobs() {
            if d == digest {
                continue;
            }
            if crate::image::media::is_manifest(&media_type) || crate::image::media::is_index(&media_type) {
                manifests.push(d);
            } else {
                layers.push(d);
            }
        }
        layout_images.push(LayoutImage {
            repository: layout::repository_for(&reference),
            tag: reference.tag().map(str::to_owned),
            manifests,
            layers,
        });
        cached.push(CachedImage {
            image: found.image.clone(),
            digest: digest.to_string(),
            platforms: image.platforms.iter().map(|p| p.platform.to_string()).collect(),
            sources: found.sources.clone(),
            origin,
            app: found.app.clone(),
        });
    }
    cached.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(Some((write_layer(store, &layout::plan(&layout_images))?, cached)))
}

/// Pulls one image (blobs only) for the build's platforms, reusing what the last build pulled.
async fn pull_for_build(
    registry: &Registry,
    store: &Store,
    source: ImageRef,
    platforms: &[Platform],
    found: &FoundImage,
) -> Result<crate::registry::PullOutcome, OfflineError> {
    let known = std::fs::read(known_path(store, &found.image))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse::<Digest>().ok());
    let request = PullRequest { source, platforms: PlatformChoice::Many(platforms.to_vec()), tag: false, known };
    let fetch_error = |source| OfflineError::Fetch {
        image: found.image.clone(),
        sources: found.sources.clone(),
        source: Box::new(source),
    };
    match crate::registry::pull(registry, store, &request, Arc::new(NoReporter)).await {
        Ok(outcome) => Ok(outcome),
        // A single-platform image is used as it is, whatever the build's platforms.
        Err(RegistryError::NotFound { .. }) if platforms.len() > 1 => {
            let request = PullRequest { platforms: PlatformChoice::All, ..request };
            crate::registry::pull(registry, store, &request, Arc::new(NoReporter)).await.map_err(fetch_error)
        }
        Err(source) => Err(fetch_error(source)),
    }
}

/// Streams the layout into one uncompressed layer (its blobs are compressed already).
fn write_layer(store: &Store, files: &BTreeMap<String, Entry>) -> Result<LayerBlob, StoreError> {
    let mut w = LayerWriter::new(store, Compression::None)?;
    let mut dirs = std::collections::BTreeSet::new();
    for path in files.keys() {
        let full = format!("registry/{path}");
        let mut parent = full.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            dirs.insert(up.to_owned());
            parent = up;
        }
    }
    for d in &dirs {
        w.add_dir(d, 0o755, 0, EntryOptions::default())?;
    }
    for (path, entry) in files {
        let target = format!("registry/{path}");
        match entry {
            Entry::Blob(d) => {
                let size = std::fs::metadata(store.blob_path(d))
                    .map_err(|e| StoreError::io("stat", store.blob_path(d), e))?
                    .len();
                w.add_file(&target, size, 0o644, 0, EntryOptions::default(), store.open_blob(d, Some(size))?)?;
            }
            Entry::Text(t) => w.add_file(&target, t.len() as u64, 0o644, 0, EntryOptions::default(), t.as_bytes())?,
        }
    }
    w.finish()
}

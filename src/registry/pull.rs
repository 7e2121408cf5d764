//! `kiln pull`: manifest or index (OCI and Docker v2 schema 2) with a platform choice; blobs
//! streamed into the store, verified, resumed with HTTP Range, a few at a time. An image that
//! is already present downloads nothing.

use std::io::{Read, Write};

use sha2::{Digest as _, Sha256};
use std::sync::Arc;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};

use super::client::{Registry, RegistryError, http_error, manifest_accept};
use super::{BlobEvent, TransferReporter, locations};
use crate::image::{Digest, ImageRef, Platform, Store, media};

/// Which platforms of a multi-platform image to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformChoice {
    /// This machine's.
    Host,
    One(Platform),
    /// Each of these (an error if the image lacks one).
    Many(Vec<Platform>),
    All,
}

#[derive(Debug, Clone)]
pub struct PullRequest {
    pub source: ImageRef,
    pub platforms: PlatformChoice,
    /// Tag the result in the local store (`false`: blobs only, as the build's image cache).
    pub tag: bool,
    /// The top-level digest pulled last time, when not tagging: if the registry still has it
    /// and every blob is here, nothing is downloaded.
    pub known: Option<Digest>,
}

impl PullRequest {
    pub fn new(source: ImageRef, platforms: PlatformChoice) -> Self {
        Self { source, platforms, tag: true, known: None }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PullOutcome {
    pub name: String,
    pub digest: String,
    #[serde(skip)]
    pub media_type: String,
    #[serde(skip)]
    pub size: u64,
    pub platforms: Vec<String>,
    pub blobs_downloaded: usize,
    pub blobs_present: usize,
    pub bytes_downloaded: u64,
}

struct Fetched {
    digest: Digest,
    media_type: String,
    bytes: Vec<u8>,
}

fn scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

async fn get_manifest(registry: &Registry, image: &ImageRef, reference: &str) -> Result<Fetched, RegistryError> {
    let url = format!("{}/v2/{}/manifests/{reference}", registry.base_url(image.registry()), image.repository());
    let resp = registry
        .send(image.registry(), &scope(image.repository()), Method::GET, &url, &|r| r.headers(manifest_accept()))
        .await?;
    match resp.status() {
        s if s.is_success() => {}
        StatusCode::NOT_FOUND => {
            return Err(RegistryError::NotFound {
                registry: image.registry().into(),
                what: format!("manifest `{}:{reference}`", image.repository()),
            });
        }
        StatusCode::FORBIDDEN => {
            return Err(RegistryError::Denied {
                registry: image.registry().into(),
                repository: image.repository().into(),
            });
        }
        _ => return Err(http_error("GET", &url, resp).await),
    }
    let header_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
    let bytes =
        resp.bytes().await.map_err(|e| RegistryError::Transport { url: url.clone(), reason: e.to_string() })?.to_vec();
    let digest = Digest::of(&bytes);
    if let Ok(expected) = reference.parse::<Digest>()
        && expected != digest
    {
        return Err(RegistryError::Store(crate::image::StoreError::DigestMismatch { expected, actual: digest }));
    }
    let body_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
    let media_type = body_type.or(header_type).unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
    Ok(Fetched { digest, media_type, bytes })
}

/// The digest the registry has for a tag, without downloading the manifest.
async fn head_manifest(
    registry: &Registry,
    image: &ImageRef,
    reference: &str,
) -> Result<Option<Digest>, RegistryError> {
    let url = format!("{}/v2/{}/manifests/{reference}", registry.base_url(image.registry()), image.repository());
    let resp = registry
        .send(image.registry(), &scope(image.repository()), Method::HEAD, &url, &|r| r.headers(manifest_accept()))
        .await?;
    if !resp.status().is_success() {
        return Ok(None);
    }
    Ok(resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok()))
}

pub async fn pull(
    registry: &Registry,
    store: &Store,
    request: &PullRequest,
    reporter: Arc<dyn TransferReporter>,
) -> Result<PullOutcome, RegistryError> {
    let image = &request.source;
    let reference = match (image.digest(), image.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => "latest".to_owned(),
    };
    let _gc = store.lock_gc_shared()?;

    // Already here with the same digest and every blob: nothing to download.
    if let Some(remote) = head_manifest(registry, image, &reference).await? {
        let local = if request.tag {
            store.image(image)?
        } else {
            match &request.known {
                Some(k) if *k == remote => known_image(store, k),
                _ => None,
            }
        };
        if let Some(local) =
            local.filter(|l| l.entry.digest == remote && l.blobs().iter().all(|(d, _, _)| store.has_blob(d)))
        {
            return Ok(PullOutcome {
                name: image.to_string(),
                digest: remote.to_string(),
                media_type: local.entry.media_type.clone(),
                size: local.entry.size,
                platforms: local.platforms.iter().map(|p| p.platform.to_string()).collect(),
                blobs_present: local.blobs().len(),
                ..Default::default()
            });
        }
    }

    let top = get_manifest(registry, image, &reference).await?;
    let mut manifests: Vec<(Fetched, Option<Platform>)> = Vec::new();
    let mut index_to_store: Option<(Vec<u8>, String)> = None;
    if media::is_index(&top.media_type) {
        let index: serde_json::Value = serde_json::from_slice(&top.bytes)
            .map_err(|e| RegistryError::Protocol(format!("index {}: {e}", top.digest)))?;
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        let platform_of = Platform::of_descriptor;
        let want: Option<Vec<Platform>> = match &request.platforms {
            PlatformChoice::Host => Some(vec![Platform::host()]),
            PlatformChoice::One(p) => Some(vec![p.clone()]),
            PlatformChoice::Many(v) => Some(v.clone()),
            PlatformChoice::All => None,
        };
        let images: Vec<&serde_json::Value> = entries
            .iter()
            .filter(|e| media::is_manifest(e["mediaType"].as_str().unwrap_or(media::OCI_MANIFEST)))
            .collect();
        let chosen: Vec<&serde_json::Value> = match &want {
            None => images.iter().copied().filter(|e| platform_of(e).is_some_and(|p| p.os != "unknown")).collect(),
            Some(wanted) => {
                let mut picked: Vec<&serde_json::Value> = Vec::new();
                for w in wanted {
                    let Some(e) = images.iter().copied().find(|e| platform_of(e).is_some_and(|p| p.matches(w))) else {
                        let available: Vec<String> =
                            entries.iter().filter_map(platform_of).map(|p| p.to_string()).collect();
                        return Err(RegistryError::NotFound {
                            registry: image.registry().into(),
                            what: format!("a {w} variant of `{image}` (it has {})", available.join(", ")),
                        });
                    };
                    if !picked.iter().any(|p| std::ptr::eq(*p, e)) {
                        picked.push(e);
                    }
                }
                picked
            }
        };
        if chosen.is_empty() {
            return Err(RegistryError::NotFound {
                registry: image.registry().into(),
                what: format!("a usable platform of `{image}`"),
            });
        }
        for e in &chosen {
            let d = e["digest"].as_str().unwrap_or_default();
            manifests.push((get_manifest(registry, image, d).await?, platform_of(e)));
        }
        if chosen.len() == entries.len() || chosen.len() > 1 {
            // Every platform: keep the registry's index byte for byte when nothing was left out.
            index_to_store = Some(if chosen.len() == entries.len() {
                (top.bytes.clone(), top.media_type.clone())
            } else {
                let mut reduced = index.clone();
                reduced["manifests"] = serde_json::Value::Array(chosen.iter().map(|e| (*e).clone()).collect());
                let bytes =
                    crate::image::canonical_json(&reduced).map_err(|e| RegistryError::Protocol(e.to_string()))?;
                (bytes, top.media_type.clone())
            });
        }
    } else {
        manifests.push((top, None));
    }

    // Blobs: configs and layers, each once.
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for (m, _) in &manifests {
        let doc: serde_json::Value = serde_json::from_slice(&m.bytes)
            .map_err(|e| RegistryError::Protocol(format!("manifest {}: {e}", m.digest)))?;
        for d in std::iter::once(&doc["config"]).chain(doc["layers"].as_array().into_iter().flatten()) {
            let digest: Digest = d["digest"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|e: crate::image::DigestError| RegistryError::Protocol(e.to_string()))?;
            if !blobs.iter().any(|(b, _)| *b == digest) {
                blobs.push((digest, d["size"].as_u64().unwrap_or(0)));
            }
        }
    }
    let (present, missing): (Vec<_>, Vec<_>) = blobs.iter().cloned().partition(|(d, _)| store.has_blob(d));
    for (d, size) in &present {
        reporter.event(d, *size, BlobEvent::Present);
    }
    let results: Vec<Result<u64, RegistryError>> = futures_util::stream::iter(missing.iter().cloned())
        .map(|(digest, size)| {
            let reporter = Arc::clone(&reporter);
            async move { download_blob(registry, store, image, &digest, size, reporter).await }
        })
        .buffer_unordered(registry.options().max_concurrent.max(1))
        .collect()
        .await;
    let mut bytes_downloaded = 0;
    for r in results {
        bytes_downloaded += r?;
    }
    // Every blob arrived and matched its digest: only now does the store change.
    for (digest, _) in &missing {
        store.adopt_verified(&partial_path(store, digest), digest)?;
    }

    // Manifests, then the index, then the tag.
    for (m, _) in &manifests {
        store.write_blob(&m.bytes)?;
    }
    let (digest, media_type, size) = match (&index_to_store, manifests.as_slice()) {
        (Some((bytes, index_media)), _) => {
            let (d, s) = store.write_blob(bytes)?;
            (d, index_media.clone(), s)
        }
        (None, [(m, _)]) => (m.digest.clone(), m.media_type.clone(), m.bytes.len() as u64),
        (None, _) => return Err(RegistryError::Protocol("no manifest selected".into())),
    };
    let local_name =
        if image.tag().is_some() { image.clone() } else { image.with_tag(&format!("sha256-{}", digest.hex())) };
    store.tag(&local_name, &digest, &media_type, size)?;
    locations::remember(store, image.registry(), image.repository(), blobs.iter().map(|(d, _)| d));
    Ok(PullOutcome {
        name: local_name.to_string(),
        digest: digest.to_string(),
        media_type: media_type.clone(),
        size,
        platforms: manifests.iter().filter_map(|(_, p)| p.as_ref().map(ToString::to_string)).collect(),
        blobs_downloaded: missing.len(),
        blobs_present: present.len(),
        bytes_downloaded,
    })
}

/// The image a cached top-level digest points at, if its documents are in the store.
fn known_image(store: &Store, digest: &Digest) -> Option<crate::image::Image> {
    let bytes = store.read_blob(digest).ok()?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["mediaType"].as_str()?.to_owned();
    let entry = crate::image::IndexEntry { name: None, digest: digest.clone(), media_type, size: bytes.len() as u64 };
    store.image_at(entry).ok()
}

fn partial_path(store: &Store, digest: &Digest) -> std::path::PathBuf {
    store.root().join("tmp").join(format!("pull-{}.partial", digest.hex()))
}

/// Downloads one blob into `<store>/tmp/pull-<hex>.partial`, resuming from what is there, and
/// verifies it; the caller moves it into the store once every blob of the pull is verified.
/// A file that does not match its digest is deleted. Returns the bytes received.
async fn download_blob(
    registry: &Registry,
    store: &Store,
    image: &ImageRef,
    digest: &Digest,
    size: u64,
    reporter: Arc<dyn TransferReporter>,
) -> Result<u64, RegistryError> {
    let url = format!("{}/v2/{}/blobs/{digest}", registry.base_url(image.registry()), image.repository());
    let partial = partial_path(store, digest);
    let io = |e: std::io::Error| RegistryError::Store(crate::image::StoreError::io("write", &partial, e));
    reporter.event(digest, size, BlobEvent::Start);
    let mut received = 0u64;
    let mut attempts = 0;
    // Hashed as it arrives; a resumed download first hashes what it already has.
    let mut hasher = Sha256::new();
    let mut hashed = 0u64;
    loop {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if hashed < have {
            let mut f = std::fs::File::open(&partial).map_err(io)?;
            std::io::copy(&mut (&mut f).take(have), &mut HashSink(&mut hasher)).map_err(io)?;
            hashed = have;
        }
        if size > 0 && have >= size {
            break;
        }
        let range = have;
        let resp = registry
            .send(image.registry(), &scope(image.repository()), Method::GET, &url, &move |r| {
                if range > 0 { r.header(reqwest::header::RANGE, format!("bytes={range}-")) } else { r }
            })
            .await?;
        let append = match resp.status() {
            StatusCode::PARTIAL_CONTENT => true,
            StatusCode::OK => false,
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::NotFound {
                    registry: image.registry().into(),
                    what: format!("blob {digest}"),
                });
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let _ = std::fs::remove_file(&partial);
                hasher = Sha256::new();
                hashed = 0;
                continue;
            }
            _ => return Err(http_error("GET", &url, resp).await),
        };
        if !append {
            hasher = Sha256::new();
            hashed = 0;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&partial)
            .map_err(io)?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        if append {
            reporter.event(digest, have, BlobEvent::Progress);
        }
        let mut stream = resp.bytes_stream();
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    file.write_all(&c).map_err(io)?;
                    hasher.update(&c);
                    hashed += c.len() as u64;
                    received += c.len() as u64;
                    reporter.event(digest, c.len() as u64, BlobEvent::Progress);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        match failed {
            None => {
                file.sync_all().map_err(io)?;
                break;
            }
            Some(e) if attempts < registry.options().retries => {
                attempts += 1;
                tracing::debug!(%digest, error = %e, "download interrupted; resuming with Range");
            }
            Some(e) => return Err(RegistryError::Transport { url, reason: crate::error_chain(&e) }),
        }
    }
    let actual = Digest::from_sha256(hasher);
    if actual != *digest {
        let _ = std::fs::remove_file(&partial);
        return Err(RegistryError::Store(crate::image::StoreError::DigestMismatch {
            expected: digest.clone(),
            actual,
        }));
    }
    reporter.event(digest, size, BlobEvent::Done);
    Ok(received)
}

/// Feeds `io::copy` into a hasher.
struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

//! `kiln push`: blobs first (skipped when the registry has them, mounted from another
//! repository when kiln knows one that has them, else uploaded monolithically or in chunks of
//! at least `OCI-Chunk-Min-Length`), a few at a time; then manifests; then the index.
//! A push that was interrupted sends only what is missing when run again.

use std::sync::Arc;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};

use super::client::{Registry, RegistryError, http_error};
use super::{BlobEvent, TransferReporter, locations};
use crate::image::{Digest, ImageRef, Store};

/// Blobs larger than this go up in chunks, so that a failure loses one chunk, not the blob.
pub const CHUNKED_ABOVE: u64 = 256 * 1024 * 1024;
const DEFAULT_CHUNK: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The image in the local store.
    pub image: ImageRef,
    /// Where it goes.
    pub destination: ImageRef,
    /// Upload blobs larger than this in chunks of this size (at least the registry's
    /// `OCI-Chunk-Min-Length`); `None`: chunks of 64 MiB above 256 MiB.
    pub chunk_size: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PushOutcome {
    pub name: String,
    pub digest: String,
    pub blobs_uploaded: usize,
    pub blobs_present: usize,
    pub blobs_mounted: usize,
    pub bytes_uploaded: u64,
}

enum BlobResult {
    Present,
    Mounted,
    Uploaded(u64),
}

pub async fn push(
    registry: &Registry,
    store: &Store,
    request: &PushRequest,
    reporter: Arc<dyn TransferReporter>,
) -> Result<PushOutcome, RegistryError> {
    let local = store.image(&request.image)?.ok_or_else(|| RegistryError::NotFound {
        registry: "the local store".into(),
        what: format!("image `{}`", request.image),
    })?;
    let dest = &request.destination;
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for p in &local.platforms {
        let config = (p.config_digest.clone(), p.manifest.config().size());
        let layers =
            p.manifest.layers().iter().filter_map(|l| Digest::from_oci(l.digest()).ok().map(|d| (d, l.size())));
        for b in std::iter::once(config).chain(layers) {
            if !blobs.contains(&b) {
                blobs.push(b);
            }
        }
    }
    let results: Vec<Result<BlobResult, RegistryError>> = futures_util::stream::iter(blobs.iter().cloned())
        .map(|(digest, size)| {
            let reporter = Arc::clone(&reporter);
            async move { push_blob(registry, store, dest, &digest, size, request.chunk_size, reporter).await }
        })
        .buffer_unordered(registry.options().max_concurrent.max(1))
        .collect()
        .await;
    let mut outcome =
        PushOutcome { name: dest.to_string(), digest: local.entry.digest.to_string(), ..Default::default() };
    for r in results {
        match r? {
            BlobResult::Present => outcome.blobs_present += 1,
            BlobResult::Mounted => outcome.blobs_mounted += 1,
            BlobResult::Uploaded(n) => {
                outcome.blobs_uploaded += 1;
                outcome.bytes_uploaded += n;
            }
        }
    }
    // Platform manifests by digest, then the top-level document by tag.
    if local.is_index {
        for p in &local.platforms {
            let bytes = store.read_blob(&p.manifest_digest)?;
            put_manifest(registry, dest, &p.manifest_digest.to_string(), &p.manifest_media_type, bytes).await?;
        }
    }
    let top = store.read_blob(&local.entry.digest)?;
    let reference = dest.tag().map(str::to_owned).unwrap_or_else(|| local.entry.digest.to_string());
    put_manifest(registry, dest, &reference, &local.entry.media_type, top).await?;
    locations::remember(store, dest.registry(), dest.repository(), blobs.iter().map(|(d, _)| d));
    Ok(outcome)
}

fn scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

async fn put_manifest(
    registry: &Registry,
    dest: &ImageRef,
    reference: &str,
    media_type: &str,
    bytes: Vec<u8>,
) -> Result<(), RegistryError> {
    let url = format!("{}/v2/{}/manifests/{reference}", registry.base_url(dest.registry()), dest.repository());
    let media_type = media_type.to_owned();
    let resp = registry
        .send(dest.registry(), &scope(dest.repository()), Method::PUT, &url, &|r| {
            r.header(reqwest::header::CONTENT_TYPE, media_type.clone()).body(bytes.clone())
        })
        .await?;
    match resp.status() {
        s if s.is_success() => Ok(()),
        StatusCode::FORBIDDEN => {
            Err(RegistryError::Denied { registry: dest.registry().into(), repository: dest.repository().into() })
        }
        _ => Err(http_error("PUT", &url, resp).await),
    }
}

#[allow(clippy::too_many_arguments)]
async fn push_blob(
    registry: &Registry,
    store: &Store,
    dest: &ImageRef,
    digest: &Digest,
    size: u64,
    chunk_size: Option<u64>,
    reporter: Arc<dyn TransferReporter>,
) -> Result<BlobResult, RegistryError> {
    let base = registry.base_url(dest.registry());
    let repo = dest.repository();
    let head_url = format!("{base}/v2/{repo}/blobs/{digest}");
    let resp = registry.send(dest.registry(), &scope(repo), Method::HEAD, &head_url, &|r| r).await?;
    if resp.status().is_success() {
        reporter.event(digest, size, BlobEvent::Present);
        return Ok(BlobResult::Present);
    }
    // Mount from a repository kiln has seen holding it; the registry answers 201 when it could.
    let mut start_url = format!("{base}/v2/{repo}/blobs/uploads/");
    let mut upload_scope = scope(repo);
    if let Some(from) = locations::source_for(store, dest.registry(), repo, digest) {
        start_url = format!("{start_url}?mount={digest}&from={from}");
        upload_scope = format!("{upload_scope} repository:{from}:pull");
    }
    let resp = registry
        .send(dest.registry(), &upload_scope, Method::POST, &start_url, &|r| {
            r.header(reqwest::header::CONTENT_LENGTH, "0")
        })
        .await?;
    match resp.status() {
        StatusCode::CREATED => {
            reporter.event(digest, size, BlobEvent::Mounted);
            return Ok(BlobResult::Mounted);
        }
        StatusCode::ACCEPTED => {}
        StatusCode::FORBIDDEN => {
            return Err(RegistryError::Denied { registry: dest.registry().into(), repository: repo.into() });
        }
        _ => return Err(http_error("POST", &start_url, resp).await),
    }
    let min_chunk = resp
        .headers()
        .get("oci-chunk-min-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let location = absolute(&base, resp.headers())?;
    reporter.event(digest, size, BlobEvent::Start);
    let (threshold, chunk) = match chunk_size {
        Some(c) => (c, c),
        None => (CHUNKED_ABOVE, DEFAULT_CHUNK),
    };
    let sent = if size > threshold {
        upload_chunked(registry, store, dest, digest, size, location, chunk.max(min_chunk).max(1), &reporter).await?
    } else {
        upload_monolithic(registry, store, dest, digest, size, location, &reporter).await?
    };
    reporter.event(digest, size, BlobEvent::Done);
    Ok(BlobResult::Uploaded(sent))
}

fn absolute(base: &str, headers: &reqwest::header::HeaderMap) -> Result<reqwest::Url, RegistryError> {
    let loc = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::Protocol("upload response without Location".into()))?;
    let base = reqwest::Url::parse(base).map_err(|e| RegistryError::Protocol(e.to_string()))?;
    base.join(loc).map_err(|e| RegistryError::Protocol(format!("bad upload Location `{loc}`: {e}")))
}

fn with_digest(mut url: reqwest::Url, digest: &Digest) -> reqwest::Url {
    url.query_pairs_mut().append_pair("digest", &digest.to_string());
    url
}

/// A body that streams `len` bytes of a blob from `offset`, reporting progress. Built afresh
/// for every attempt, so a retried request sends the bytes again.
fn blob_body(
    store: &Store,
    digest: &Digest,
    offset: u64,
    len: u64,
    reporter: &Arc<dyn TransferReporter>,
) -> reqwest::Body {
    use std::io::{Read, Seek};
    let path = store.blob_path(digest);
    let reader =
        std::fs::File::open(&path).and_then(|mut f| f.seek(std::io::SeekFrom::Start(offset)).map(|_| f.take(len)));
    let reporter = Arc::clone(reporter);
    let digest = digest.clone();
    match reader {
        Ok(reader) => {
            let file = tokio::fs::File::from_std(reader.into_inner());
            let stream =
                tokio_util::io::ReaderStream::with_capacity(tokio::io::AsyncReadExt::take(file, len), 256 * 1024)
                    .inspect(move |chunk| {
                        if let Ok(c) = chunk {
                            reporter.event(&digest, c.len() as u64, BlobEvent::Progress);
                        }
                    });
            reqwest::Body::wrap_stream(stream)
        }
        // An unreadable blob sends nothing; the registry then rejects the digest.
        Err(_) => reqwest::Body::from(Vec::new()),
    }
}

async fn upload_monolithic(
    registry: &Registry,
    store: &Store,
    dest: &ImageRef,
    digest: &Digest,
    size: u64,
    location: reqwest::Url,
    reporter: &Arc<dyn TransferReporter>,
) -> Result<u64, RegistryError> {
    let url = with_digest(location, digest);
    let resp = registry
        .send(dest.registry(), &scope(dest.repository()), Method::PUT, url.as_str(), &|r| {
            r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(blob_body(store, digest, 0, size, reporter))
        })
        .await?;
    if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
        return Err(http_error("PUT", url.as_str(), resp).await);
    }
    Ok(size)
}

#[allow(clippy::too_many_arguments)]
async fn upload_chunked(
    registry: &Registry,
    store: &Store,
    dest: &ImageRef,
    digest: &Digest,
    size: u64,
    mut location: reqwest::Url,
    chunk: u64,
    reporter: &Arc<dyn TransferReporter>,
) -> Result<u64, RegistryError> {
    let base = registry.base_url(dest.registry());
    let mut offset = 0u64;
    let mut sent = 0u64;
    let mut attempts = 0;
    while offset < size {
        let len = chunk.min(size - offset);
        let url = location.clone();
        let result = registry
            .send(dest.registry(), &scope(dest.repository()), Method::PATCH, url.as_str(), &|r| {
                r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .header("Content-Range", format!("{offset}-{}", offset + len - 1))
                    .body(blob_body(store, digest, offset, len, reporter))
            })
            .await;
        match result {
            Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                location = absolute(&base, resp.headers())?;
                offset += len;
                sent += len;
            }
            Ok(resp) => return Err(http_error("PATCH", url.as_str(), resp).await),
            Err(e) if attempts < registry.options().retries => {
                // Ask the registry how much it kept and continue from there.
                attempts += 1;
                tracing::debug!(%digest, error = %e, "chunk failed; asking the registry for the upload status");
                let resp = registry
                    .send(dest.registry(), &scope(dest.repository()), Method::GET, url.as_str(), &|r| r)
                    .await?;
                if resp.status() != StatusCode::NO_CONTENT {
                    return Err(e);
                }
                offset = resp
                    .headers()
                    .get(reqwest::header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit('-').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(0, |end| end + 1);
                location = absolute(&base, resp.headers()).unwrap_or(location);
            }
            Err(e) => return Err(e),
        }
    }
    let url = with_digest(location, digest);
    let resp = registry
        .send(dest.registry(), &scope(dest.repository()), Method::PUT, url.as_str(), &|r| {
            r.header(reqwest::header::CONTENT_LENGTH, "0")
        })
        .await?;
    if !resp.status().is_success() {
        return Err(http_error("PUT", url.as_str(), resp).await);
    }
    Ok(sent)
}

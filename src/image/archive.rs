//! `save` and `load`: OCI archives (an OCI image layout in a tar) and `docker save` tars.
//!
//! Saving writes a temp file beside the output and renames it when complete; every blob is
//! verified as it is copied. Loading unpacks into a scratch directory inside the store,
//! verifies every blob before any is moved into the store, and tags only at the end; if
//! anything fails, blobs it added are removed again, so a bad archive leaves no trace.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};

use super::digest::{Digest, HashingWriter};
use super::layer::DEFAULT_GZIP_LEVEL;
use super::media;
use super::reference::ImageRef;
use super::store::{Store, StoreError};
use super::{Image, canonical_json};

/// Byte-level progress for long copies.
pub trait Progress: Send + Sync {
    fn start(&self, total: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` is not a valid image archive: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("archive entry `{0}` escapes the archive root")]
    Escapes(String),
    #[error("archive entry `{name}` has no usable image name; pass `--tag NAME[:TAG]`")]
    NeedsName { name: String },
    #[error("archive holds {0} images; `--tag` can name only an archive with one")]
    TagAmbiguous(usize),
}

struct CountingReader<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Writes `images` as one OCI archive at `output`.
pub fn save(store: &Store, images: &[Image], output: &Path, progress: &dyn Progress) -> Result<(), ArchiveError> {
    let write_err = |source: io::Error| ArchiveError::Write { path: output.to_owned(), source };
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".kiln-save-").tempfile_in(dir).map_err(write_err)?;

    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    for image in images {
        for (digest, size, _) in image.blobs() {
            blobs.insert(digest, size);
        }
    }
    progress.start(blobs.values().sum());
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, tmp.as_file()));
    let add = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| -> Result<(), ArchiveError> {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, bytes).map_err(write_err)
    };
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, dir, io::empty()).map_err(write_err)?;
    }
    for (digest, size) in &blobs {
        let reader = store.open_blob(digest, Some(*size))?;
        let mut h = tar::Header::new_ustar();
        h.set_size(*size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("blobs/sha256/{}", digest.hex()), CountingReader { inner: reader, progress })
            .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => {
                ArchiveError::Store(StoreError::CorruptBlob { digest: digest.clone(), reason: e.to_string() })
            }
            _ => write_err(e),
        })?;
    }
    let entries: Vec<_> = images.iter().map(|img| img.entry.clone()).collect();
    let index = super::store::index_document(&entries).map_err(|e| write_err(io::Error::other(e)))?;
    add(&mut tar, "index.json", &canonical_json(&index).map_err(|e| write_err(io::Error::other(e)))?)?;
    let mut buffered = tar.into_inner().map_err(write_err)?;
    buffered.flush().map_err(write_err)?;
    drop(buffered);
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(output).map_err(|e| write_err(e.error))?;
    progress.finish();
    Ok(())
}

/// Images a load added.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Loaded {
    pub name: String,
    pub digest: Digest,
}

/// One image found in an archive or layout, its blobs already in the store.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// Names the archive gives it (none when it carries only a bare tag or nothing).
    pub names: Vec<ImageRef>,
    /// What the archive calls it, for messages when `names` is empty.
    pub label: String,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// Loads an OCI archive or a `docker save` tar (plain or gzip-compressed).
pub fn load(
    store: &Store,
    input: &Path,
    tag: Option<&ImageRef>,
    progress: &dyn Progress,
) -> Result<Vec<Loaded>, ArchiveError> {
    let _gc = store.lock_gc_shared()?;
    let mut added = Vec::new();
    let result = import_into(store, input, progress, &mut added).and_then(|images| {
        if tag.is_some() && images.len() > 1 {
            return Err(ArchiveError::TagAmbiguous(images.len()));
        }
        let mut pending = Vec::new();
        for image in &images {
            let names = match tag {
                Some(t) => vec![t.clone()],
                None if image.names.is_empty() => return Err(ArchiveError::NeedsName { name: image.label.clone() }),
                None => image.names.clone(),
            };
            pending.extend(names.into_iter().map(|n| (n, image)));
        }
        // Tag only once every image in the archive is in.
        let mut loaded = Vec::new();
        for (name, image) in pending {
            store.tag(&name, &image.digest, &image.media_type, image.size)?;
            loaded.push(Loaded { name: name.to_string(), digest: image.digest.clone() });
        }
        Ok(loaded)
    });
    if result.is_err() {
        for digest in &added {
            let _ = fs::remove_file(store.blob_path(digest));
        }
    }
    result
}

/// Puts every blob of an OCI archive, a `docker save` tar or an OCI layout directory into the
/// store without tagging anything (`--image-source`); returns what it holds. Blobs come out of
/// a directory by copy, so the user's layout is left as it was. The caller holds the GC lock.
pub fn import(store: &Store, input: &Path, progress: &dyn Progress) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let mut added = Vec::new();
    let result = import_into(store, input, progress, &mut added);
    if result.is_err() {
        for digest in &added {
            let _ = fs::remove_file(store.blob_path(digest));
        }
    }
    result
}

fn import_into(
    store: &Store,
    input: &Path,
    progress: &dyn Progress,
    added: &mut Vec<Digest>,
) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let scratch;
    let (root, borrowed) = if input.is_dir() {
        (input, true)
    } else {
        scratch = store.scratch_dir("load-")?;
        unpack(input, scratch.path(), progress)?;
        (scratch.path(), false)
    };
    let job = LoadJob { store, input, root, borrowed };
    if root.join("index.json").is_file() && root.join("oci-layout").is_file() {
        load_oci(&job, added)
    } else if root.join("manifest.json").is_file() {
        load_docker(&job, added)
    } else {
        Err(ArchiveError::Invalid {
            path: input.to_owned(),
            reason: "neither an OCI layout or archive (oci-layout, index.json) nor a docker archive (manifest.json)"
                .into(),
        })
    }
}

/// An archive unpacked into a scratch directory (or a layout directory), ready to be imported.
#[derive(Clone, Copy)]
struct LoadJob<'a> {
    store: &'a Store,
    input: &'a Path,
    root: &'a Path,
    /// `root` belongs to the user: copy blobs out of it instead of moving them.
    borrowed: bool,
}

impl LoadJob<'_> {
    fn invalid(&self, reason: String) -> ArchiveError {
        ArchiveError::Invalid { path: self.input.to_owned(), reason }
    }
}

fn unpack(input: &Path, root: &Path, progress: &dyn Progress) -> Result<(), ArchiveError> {
    let invalid = |reason: String| ArchiveError::Invalid { path: input.to_owned(), reason };
    let file = fs::File::open(input).map_err(|e| invalid(e.to_string()))?;
    progress.start(file.metadata().map(|m| m.len()).unwrap_or(0));
    let mut reader = BufReader::with_capacity(1 << 20, CountingReader { inner: file, progress });
    let gzip = reader.fill_buf_peek()?.starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> =
        if gzip { Box::new(flate2::read::MultiGzDecoder::new(reader)) } else { Box::new(reader) };
    let mut archive = tar::Archive::new(stream);
    let mut seen = 0usize;
    for entry in archive.entries().map_err(|e| invalid(e.to_string()))? {
        let mut entry = entry.map_err(|e| invalid(format!("truncated or corrupt: {e}")))?;
        let path = entry.path().map_err(|e| invalid(e.to_string()))?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))) {
            return Err(ArchiveError::Escapes(path.display().to_string()));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Continuous => {}
            // Links and devices have no place in an image archive.
            _ => continue,
        }
        let ok = entry.unpack_in(root).map_err(|e| {
            let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_else(|| e.kind().to_string());
            invalid(format!("truncated or corrupt at entry `{}`: {cause}", path.display()))
        })?;
        if !ok {
            return Err(ArchiveError::Escapes(path.display().to_string()));
        }
        seen += 1;
    }
    if seen == 0 {
        return Err(invalid("the archive is empty".into()));
    }
    progress.finish();
    Ok(())
}

trait PeekExt {
    fn fill_buf_peek(&mut self) -> Result<&[u8], ArchiveError>;
}

impl<R: Read> PeekExt for BufReader<R> {
    fn fill_buf_peek(&mut self) -> Result<&[u8], ArchiveError> {
        use std::io::BufRead;
        self.fill_buf().map_err(|e| ArchiveError::Invalid { path: PathBuf::new(), reason: e.to_string() })
    }
}

/// Checks an unpacked blob against its digest (an absent file means the archive lacks it).
fn verify_file(store: &Store, path: &Path, expected: &Digest) -> Result<u64, ArchiveError> {
    if !path.is_file() {
        return Err(ArchiveError::Invalid { path: path.to_owned(), reason: format!("missing blob {expected}") });
    }
    Ok(store.verify_file(path, expected)?)
}

/// Moves (or, from a user's directory, copies) a verified file into the store's blobs; records
/// it if it was not there before.
fn store_blob(job: &LoadJob<'_>, path: &Path, digest: &Digest, added: &mut Vec<Digest>) -> Result<(), ArchiveError> {
    let store = job.store;
    if store.has_blob(digest) {
        return Ok(());
    }
    let target = store.blob_path(digest);
    if job.borrowed {
        // Copied through a verifying writer: the directory may change under us.
        let mut writer = store.blob_writer()?;
        let mut file = fs::File::open(path).map_err(|e| StoreError::io("open blob", path, e))?;
        io::copy(&mut file, &mut writer).map_err(|e| StoreError::io("copy blob", path, e))?;
        writer.commit_expecting(digest)?;
    } else {
        fs::rename(path, &target).map_err(|e| StoreError::io("store blob", &target, e))?;
    }
    added.push(digest.clone());
    Ok(())
}

fn load_oci(job: &LoadJob<'_>, added: &mut Vec<Digest>) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let LoadJob { store, root, .. } = *job;
    let invalid = |reason: String| job.invalid(reason);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("index.json")).map_err(|e| invalid(e.to_string()))?)
            .map_err(|e| invalid(format!("index.json: {e}")))?;
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        return Err(invalid("index.json lists no images".into()));
    }
    let blob = |d: &Digest| root.join("blobs").join("sha256").join(d.hex());
    // Pass 1: find and verify every blob, so nothing is imported from a bad archive.
    let mut all: Vec<Digest> = Vec::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<(Digest, String)> = Vec::new();
    let mut tops = Vec::new();
    for e in &entries {
        let digest: Digest =
            e["digest"].as_str().unwrap_or_default().parse().map_err(|e: super::DigestError| invalid(e.to_string()))?;
        let media_type = e["mediaType"].as_str().unwrap_or(media::OCI_MANIFEST).to_owned();
        let size = e["size"].as_u64().unwrap_or(0);
        // containerd's `ctr export` records the full name apart; skopeo's `oci:DIR:NAME` puts
        // whatever NAME was (often a bare tag) in ref.name.
        let ref_name = e["annotations"][media::ANNOTATION_REF_NAME].as_str().map(str::to_owned);
        let full_name = e["annotations"]["io.containerd.image.name"].as_str();
        let names: Vec<ImageRef> = full_name
            .or(ref_name.as_deref().filter(|n| n.contains('/')))
            .and_then(|n| n.parse().ok())
            .into_iter()
            .collect();
        let label = ref_name.or(full_name.map(str::to_owned)).unwrap_or_else(|| "<unnamed>".into());
        tops.push(ArchiveImage { names, label, digest: digest.clone(), media_type: media_type.clone(), size });
        todo.push((digest, media_type));
    }
    while let Some((digest, media_type)) = todo.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        verify_file(store, &blob(&digest), &digest)?;
        all.push(digest.clone());
        if media::is_index(&media_type) || media::is_manifest(&media_type) {
            let doc: serde_json::Value =
                serde_json::from_slice(&fs::read(blob(&digest)).map_err(|e| invalid(e.to_string()))?)
                    .map_err(|e| invalid(format!("{digest}: {e}")))?;
            let children = doc["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(std::iter::once(&doc["config"]))
                .chain(doc["layers"].as_array().into_iter().flatten());
            for c in children {
                if let Some(d) = c["digest"].as_str() {
                    let d: Digest = d.parse().map_err(|e: super::DigestError| invalid(e.to_string()))?;
                    todo.push((d, c["mediaType"].as_str().unwrap_or_default().to_owned()));
                }
            }
        }
    }
    for d in &all {
        store_blob(job, &blob(d), d, added)?;
    }
    Ok(tops)
}

fn load_docker(job: &LoadJob<'_>, added: &mut Vec<Digest>) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let LoadJob { store, root, .. } = *job;
    let invalid = |reason: String| job.invalid(reason);
    let manifest: Vec<serde_json::Value> =
        serde_json::from_slice(&fs::read(root.join("manifest.json")).map_err(|e| invalid(e.to_string()))?)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let safe = |rel: &str| -> Result<PathBuf, ArchiveError> {
        let p = Path::new(rel);
        if p.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(ArchiveError::Escapes(rel.to_owned()));
        }
        Ok(root.join(p))
    };
    let mut images = Vec::new();
    for image in &manifest {
        let config_rel =
            image["Config"].as_str().ok_or_else(|| invalid("manifest.json entry without Config".into()))?;
        let config_bytes = fs::read(safe(config_rel)?).map_err(|e| invalid(format!("{config_rel}: {e}")))?;
        let config: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|e| invalid(format!("{config_rel}: {e}")))?;
        let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d.as_str().unwrap_or_default().parse())
            .collect::<Result<_, _>>()
            .map_err(|e: super::DigestError| invalid(format!("{config_rel}: {e}")))?;
        let layers: Vec<&str> = image["Layers"].as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect();
        if layers.len() != diff_ids.len() {
            return Err(invalid(format!("{config_rel}: {} layers but {} diff_ids", layers.len(), diff_ids.len())));
        }
        // Layers in docker archives are uncompressed tars: gzip them into the store while
        // checking each against its diff_id.
        let mut descriptors = Vec::new();
        for (rel, diff_id) in layers.iter().zip(&diff_ids) {
            let path = safe(rel)?;
            let file = fs::File::open(&path).map_err(|e| invalid(format!("{rel}: {e}")))?;
            let mut writer = HashingWriter::new(flate2::write::GzEncoder::new(
                store.blob_writer()?,
                flate2::Compression::new(DEFAULT_GZIP_LEVEL),
            ));
            io::copy(&mut BufReader::with_capacity(1 << 20, file), &mut writer)
                .map_err(|e| invalid(format!("{rel}: {e}")))?;
            let (encoder, actual, _) = writer.finish();
            if actual != *diff_id {
                return Err(StoreError::DigestMismatch { expected: diff_id.clone(), actual }.into());
            }
            let blob = encoder.finish().map_err(|e| invalid(e.to_string()))?;
            let (digest, size, new) = blob.commit_tracked()?;
            if new {
                added.push(digest.clone());
            }
            descriptors.push(Descriptor::new(MediaType::ImageLayerGzip, size, digest.to_oci()));
        }
        let (config_digest, config_size, new) = store.write_blob_tracked(&config_bytes)?;
        if new {
            added.push(config_digest.clone());
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(MediaType::ImageConfig, config_size, config_digest.to_oci()))
            .layers(descriptors)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let bytes = canonical_json(&manifest).map_err(|e| invalid(e.to_string()))?;
        let (digest, size, new) = store.write_blob_tracked(&bytes)?;
        if new {
            added.push(digest.clone());
        }
        let names: Vec<ImageRef> = image["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .map(|t| t.parse().map_err(|_| ArchiveError::NeedsName { name: t.to_owned() }))
            .collect::<Result<_, _>>()?;
        images.push(ArchiveImage {
            names,
            label: config_rel.to_owned(),
            digest,
            media_type: media::OCI_MANIFEST.to_owned(),
            size,
        });
    }
    Ok(images)
}

//! The local image store: an OCI image layout under the data directory.
//!
//! ```text
//! <root>/oci/oci-layout            {"imageLayoutVersion": "1.0.0"}
//! <root>/oci/index.json            tagged images (annotation org.opencontainers.image.ref.name)
//! <root>/oci/blobs/sha256/<hex>    content-addressed blobs
//! <root>/tmp/                      blobs being written (renamed into blobs/ when complete)
//! <root>/locks/                    index.lock, gc.lock (see `lock`)
//! <root>/cache/                    build cache (owned by `build`)
//! ```
//! Every write is a temp file renamed into place; every read of a blob is verified against
//! its digest. `skopeo` and other OCI tools can read `<root>/oci` directly.

mod blobs;
mod gc;
mod lock;

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};
use serde::de::DeserializeOwned;

pub use blobs::BlobWriter;
pub use blobs::FileError;
pub(crate) use blobs::{create_private_dir, read_if_exists, write_atomic, write_private, write_public};
pub use gc::GcReport;
pub use lock::LockGuard;

use super::digest::{Digest, VerifyingReader};
use super::media;
use super::reference::ImageRef;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to {action}{}", path.as_ref().map(|p| format!(" `{}`", p.display())).unwrap_or_default())]
    Io {
        action: String,
        path: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("blob {digest} in the store is corrupt: {reason}")]
    CorruptBlob { digest: Digest, reason: String },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("`{path}` is not a valid OCI index: {reason}")]
    BadIndex { path: PathBuf, reason: String },
    #[error("blob {digest} is not valid JSON of the expected kind: {reason}")]
    BadJson { digest: Digest, reason: String },
}

impl StoreError {
    pub(crate) fn io(action: &str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io { action: action.to_owned(), path: Some(path.as_ref().to_owned()), source }
    }
}

/// One entry of `index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The full normalised name, e.g. `docker.io/library/demo:1.0`.
    pub name: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub entries: Vec<IndexEntry>,
}

/// The `index.json` of an OCI layout listing `entries`, each named by its ref.name annotation.
pub(crate) fn index_document(entries: &[IndexEntry]) -> Result<ImageIndex, oci_spec::OciSpecError> {
    let manifests: Vec<Descriptor> = entries
        .iter()
        .map(|e| {
            let mut d = Descriptor::new(MediaType::from(e.media_type.as_str()), e.size, e.digest.to_oci());
            if let Some(name) = &e.name {
                d.set_annotations(Some([(media::ANNOTATION_REF_NAME.to_owned(), name.clone())].into()));
            }
            d
        })
        .collect();
    ImageIndexBuilder::default().schema_version(2u32).media_type(MediaType::ImageIndex).manifests(manifests).build()
}

/// Handle on a store directory. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        for dir in [store.blobs_dir(), store.tmp_dir(), store.root.join("locks"), store.cache_dir()] {
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
        }
        let layout = store.layout_dir().join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(|e| StoreError::io("write", &layout, e))?;
        }
        let index = store.index_path();
        if !index.exists() {
            let _guard = store.lock_index()?;
            if !index.exists() {
                store.write_index(&Index::default())?;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The OCI image layout directory (what `skopeo … oci:<dir>:<name>` takes).
    pub fn layout_dir(&self) -> PathBuf {
        self.root.join("oci")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh private scratch directory inside the store (same filesystem, so renames work).
    pub fn scratch_dir(&self, prefix: &str) -> Result<tempfile::TempDir, StoreError> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp_dir())
            .map_err(|e| StoreError::io("create a scratch dir in", self.tmp_dir(), e))
    }

    fn blobs_dir(&self) -> PathBuf {
        self.layout_dir().join("blobs").join("sha256")
    }

    fn index_path(&self) -> PathBuf {
        self.layout_dir().join("index.json")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Serialises `index.json` updates between processes.
    pub fn lock_index(&self) -> Result<LockGuard, StoreError> {
        let path = self.root.join("locks").join("index.lock");
        lock::exclusive(&path).map_err(|e| StoreError::io("lock", &path, e))
    }

    /// Held by any command that writes blobs it has not tagged yet; keeps GC away.
    pub fn lock_gc_shared(&self) -> Result<LockGuard, StoreError> {
        let path = self.root.join("locks").join("gc.lock");
        lock::shared(&path).map_err(|e| StoreError::io("lock", &path, e))
    }

    fn lock_gc_exclusive(&self) -> Result<LockGuard, StoreError> {
        let path = self.root.join("locks").join("gc.lock");
        lock::exclusive(&path).map_err(|e| StoreError::io("lock", &path, e))
    }

    /// Starts writing a new blob.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        BlobWriter::new(self)
    }

    /// Stores `bytes` and returns their digest and size.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<(Digest, u64), StoreError> {
        use std::io::Write;
        let mut w = self.blob_writer()?;
        w.write_all(bytes).map_err(|e| StoreError::Io { action: "write a blob".into(), path: None, source: e })?;
        w.commit()
    }

    /// Stores `bytes`; also says whether the blob is new to the store (for rollback).
    pub fn write_blob_tracked(&self, bytes: &[u8]) -> Result<(Digest, u64, bool), StoreError> {
        use std::io::Write;
        let mut w = self.blob_writer()?;
        w.write_all(bytes).map_err(|e| StoreError::Io { action: "write a blob".into(), path: None, source: e })?;
        w.commit_tracked()
    }

    /// Checks that a file has `expected` digest.
    pub fn verify_file(&self, path: &Path, expected: &Digest) -> Result<u64, StoreError> {
        let mut file = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
        let mut hasher = super::digest::HashingWriter::new(std::io::sink());
        std::io::copy(&mut file, &mut hasher).map_err(|e| StoreError::io("read", path, e))?;
        let (_, actual, size) = hasher.finish();
        if actual != *expected {
            return Err(StoreError::DigestMismatch { expected: expected.clone(), actual });
        }
        file.sync_all().map_err(|e| StoreError::io("sync", path, e))?;
        Ok(size)
    }

    /// Moves a file already checked with [`Store::verify_file`] (in this store's `tmp/`)
    /// into the blobs.
    pub fn adopt_verified(&self, path: &Path, digest: &Digest) -> Result<(), StoreError> {
        let target = self.blob_path(digest);
        if target.exists() {
            let _ = fs::remove_file(path);
            return Ok(());
        }
        fs::rename(path, &target).map_err(|e| StoreError::io("store blob", &target, e))
    }

    /// Opens a blob for streaming; the reader fails at the end if the content is corrupt.
    pub fn open_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<VerifyingReader<BufReader<File>>, StoreError> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::MissingBlob(digest.clone()),
            _ => StoreError::io("open", &path, e),
        })?;
        Ok(VerifyingReader::new(BufReader::with_capacity(256 * 1024, file), digest.clone(), size))
    }

    /// Reads a whole blob and verifies it.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.open_blob(digest, None)?
            .read_to_end(&mut out)
            .map_err(|e| StoreError::CorruptBlob { digest: digest.clone(), reason: e.to_string() })?;
        Ok(out)
    }

    /// Reads and parses a JSON blob (manifest, index, config).
    pub fn read_json<T: DeserializeOwned>(&self, digest: &Digest) -> Result<T, StoreError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::BadJson { digest: digest.clone(), reason: e.to_string() })
    }

    /// Checks a blob fully against its digest.
    pub fn verify_blob(&self, digest: &Digest, size: Option<u64>) -> Result<(), StoreError> {
        let mut reader = self.open_blob(digest, size)?;
        std::io::copy(&mut reader, &mut std::io::sink())
            .map(|_| ())
            .map_err(|e| StoreError::CorruptBlob { digest: digest.clone(), reason: e.to_string() })
    }

    pub(crate) fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.index_path();
        let bad = |reason: String| StoreError::BadIndex { path: path.clone(), reason };
        let bytes = fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
        let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let entries = index
            .manifests()
            .iter()
            .map(|d| {
                Ok(IndexEntry {
                    name: d.annotations().as_ref().and_then(|a| a.get(media::ANNOTATION_REF_NAME)).cloned(),
                    digest: Digest::from_oci(d.digest()).map_err(|e| bad(e.to_string()))?,
                    media_type: d.media_type().to_string(),
                    size: d.size(),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Index { entries })
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let bad = |reason: String| StoreError::BadIndex { path: self.index_path(), reason };
        let document = index_document(&index.entries).map_err(|e| bad(e.to_string()))?;
        let value = serde_json::to_value(&document).map_err(|e| bad(e.to_string()))?;
        let bytes = serde_json::to_vec_pretty(&value).map_err(|e| bad(e.to_string()))?;
        write_atomic(&self.index_path(), &bytes).map_err(|e| StoreError::io("write", self.index_path(), e))
    }

    /// All tagged images, in `index.json` order.
    pub fn list(&self) -> Result<Vec<IndexEntry>, StoreError> {
        Ok(self.read_index()?.entries.into_iter().filter(|e| e.name.is_some()).collect())
    }

    /// The entry named `name` (an exact normalised match).
    pub fn resolve(&self, name: &ImageRef) -> Result<Option<IndexEntry>, StoreError> {
        let wanted = name.to_string();
        if name.tag().is_none()
            && let Some(digest) = name.digest()
        {
            // `repo@sha256:…`: any entry of that repository whose top-level digest matches.
            let prefix = format!("{}:", name.name());
            return Ok(self
                .read_index()?
                .entries
                .into_iter()
                .find(|e| e.digest == digest && e.name.as_deref().is_some_and(|n| n.starts_with(&prefix))));
        }
        Ok(self.read_index()?.entries.into_iter().find(|e| e.name.as_deref() == Some(wanted.as_str())))
    }

    /// Points `name` at a manifest or index blob (replacing what it pointed at).
    pub fn tag(&self, name: &ImageRef, digest: &Digest, media_type: &str, size: u64) -> Result<(), StoreError> {
        if !self.has_blob(digest) {
            return Err(StoreError::MissingBlob(digest.clone()));
        }
        let _guard = self.lock_index()?;
        let mut index = self.read_index()?;
        let name = name.to_string();
        index.entries.retain(|e| e.name.as_deref() != Some(name.as_str()));
        index.entries.push(IndexEntry {
            name: Some(name),
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            size,
        });
        self.write_index(&index)
    }

    /// Removes the name; returns whether it existed. Blobs stay until [`Store::gc`].
    pub fn untag(&self, name: &ImageRef) -> Result<bool, StoreError> {
        let _guard = self.lock_index()?;
        let mut index = self.read_index()?;
        let before = index.entries.len();
        let name = name.to_string();
        index.entries.retain(|e| e.name.as_deref() != Some(name.as_str()));
        let removed = index.entries.len() != before;
        if removed {
            self.write_index(&index)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn blobs_round_trip_and_verify() {
        let (_d, s) = store();
        let (digest, size) = s.write_blob(b"hello").unwrap();
        assert_eq!(size, 5);
        assert_eq!(s.read_blob(&digest).unwrap(), b"hello");
        fs::write(s.blob_path(&digest), b"hellO").unwrap();
        assert!(matches!(s.read_blob(&digest), Err(StoreError::CorruptBlob { .. })));
        assert!(matches!(s.read_blob(&Digest::of(b"x")), Err(StoreError::MissingBlob(_))));
    }

    #[test]
    fn commit_expecting_stores_nothing_on_mismatch() {
        use std::io::Write;
        let (_d, s) = store();
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"abc").unwrap();
        assert!(w.commit_expecting(&Digest::of(b"abd")).is_err());
        assert!(!s.has_blob(&Digest::of(b"abc")));
        assert_eq!(fs::read_dir(s.blobs_dir()).unwrap().count(), 0);
    }

    #[test]
    fn tag_untag_and_gc() {
        let (_d, s) = store();
        let (layer, lsize) = s.write_blob(b"layer").unwrap();
        let (config, csize) = s.write_blob(b"{}").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config.to_string(), "size": csize},
            "layers": [{"mediaType": media::OCI_LAYER_GZIP, "digest": layer.to_string(), "size": lsize}],
        });
        let (m, msize) = s.write_blob(&serde_json::to_vec(&manifest).unwrap()).unwrap();
        let (orphan, _) = s.write_blob(b"orphan").unwrap();
        let name: ImageRef = "demo:1".parse().unwrap();
        s.tag(&name, &m, media::OCI_MANIFEST, msize).unwrap();
        assert_eq!(s.resolve(&name).unwrap().unwrap().digest, m);
        assert_eq!(s.list().unwrap().len(), 1);

        let report = s.gc().unwrap();
        assert_eq!(report.blobs_removed, 1);
        assert!(!s.has_blob(&orphan));
        assert!(s.has_blob(&layer) && s.has_blob(&config) && s.has_blob(&m));

        assert!(s.untag(&name).unwrap());
        assert!(!s.untag(&name).unwrap());
        assert_eq!(s.gc().unwrap().blobs_removed, 3);
    }

    #[test]
    fn index_is_a_valid_oci_layout() {
        let (_d, s) = store();
        let (m, size) = s.write_blob(b"{}").unwrap();
        s.tag(&"a/b:c".parse().unwrap(), &m, media::OCI_MANIFEST, size).unwrap();
        let index: serde_json::Value = serde_json::from_slice(&fs::read(s.index_path()).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"][0]["annotations"][media::ANNOTATION_REF_NAME], "docker.io/a/b:c");
        assert!(s.layout_dir().join("oci-layout").exists());
    }
}

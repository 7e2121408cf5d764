//! Writing blobs: a temp file in the store, hashed while written, renamed into place.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use tempfile::NamedTempFile;

use super::{Store, StoreError};
use crate::image::digest::{Digest, HashingWriter};

/// A blob being written. Nothing is visible in the store until [`BlobWriter::commit`].
pub struct BlobWriter {
    writer: HashingWriter<BufWriter<NamedTempFile>>,
    blobs_dir: PathBuf,
}

impl BlobWriter {
    pub(super) fn new(store: &Store) -> Result<Self, StoreError> {
        let tmp = NamedTempFile::new_in(store.tmp_dir())
            .map_err(|e| StoreError::io("create a temp file in", store.tmp_dir(), e))?;
        Ok(Self { writer: HashingWriter::new(BufWriter::with_capacity(256 * 1024, tmp)), blobs_dir: store.blobs_dir() })
    }

    pub fn written(&self) -> u64 {
        self.writer.written()
    }

    /// Makes the blob durable and visible under its digest.
    pub fn commit(self) -> Result<(Digest, u64), StoreError> {
        self.commit_inner(None).map(|(d, s, _)| (d, s))
    }

    /// Like [`Self::commit`]; also says whether the blob is new to the store (for rollback).
    pub fn commit_tracked(self) -> Result<(Digest, u64, bool), StoreError> {
        self.commit_inner(None)
    }

    /// Like [`Self::commit`], but fails (storing nothing) unless the content has `expected` digest.
    pub fn commit_expecting(self, expected: &Digest) -> Result<(Digest, u64), StoreError> {
        self.commit_inner(Some(expected)).map(|(d, s, _)| (d, s))
    }

    fn commit_inner(self, expected: Option<&Digest>) -> Result<(Digest, u64, bool), StoreError> {
        let (buffered, digest, size) = self.writer.finish();
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(StoreError::DigestMismatch { expected: expected.clone(), actual: digest });
        }
        let tmp = buffered.into_inner().map_err(|e| StoreError::Io {
            action: "flush a blob".into(),
            path: None,
            source: e.into_error(),
        })?;
        let target = self.blobs_dir.join(digest.hex());
        if target.exists() {
            return Ok((digest, size, false)); // content-addressed: the same bytes are already there
        }
        tmp.as_file().sync_all().map_err(|e| StoreError::io("sync", tmp.path(), e))?;
        tmp.persist(&target).map_err(|e| StoreError::io("store blob", &target, e.error))?;
        Ok((digest, size, true))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// fsyncs a directory so that a rename inside it survives a crash.
pub(crate) fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: temp file beside it, fsync, rename, fsync the directory.
/// The file is 0600.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with_mode(path, bytes, 0o600)
}

/// An I/O error on one of kiln's state files, with the file's path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &std::path::Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError { path: path.to_owned(), source }
}

/// The file's text, or `None` when it does not exist.
pub(crate) fn read_if_exists(path: &std::path::Path) -> Result<Option<String>, FileError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(path)(e)),
    }
}

/// Creates `dir` and its parents, mode 0700 (it holds keys).
pub(crate) fn create_private_dir(dir: &std::path::Path) -> Result<(), FileError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(at(dir))
}

/// [`write_atomic`] (mode 0600) naming the file in its error.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_with_mode(path, bytes, 0o600).map_err(at(path))
}

/// [`write_atomic_with_mode`] 0644 (certificates) naming the file in its error.
pub(crate) fn write_public(path: &std::path::Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_with_mode(path, bytes, 0o644).map_err(at(path))
}

/// [`write_atomic`] with the file's mode set from its creation, so a secret is never readable.
pub(crate) fn write_atomic_with_mode(path: &std::path::Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().permissions(fs::Permissions::from_mode(mode)).tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

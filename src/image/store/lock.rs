//! Advisory file locks that make concurrent kiln commands safe on one store.
//!
//! Two locks: `index.lock` serialises read-modify-write of `index.json`; `gc.lock` is held
//! shared by every command that may have blobs in flight (written but not yet referenced) and
//! exclusively by garbage collection, so GC never deletes a blob a build is about to tag.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// A held lock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

pub(crate) fn exclusive(path: &Path) -> io::Result<LockGuard> {
    let file = open(path)?;
    file.lock()?;
    Ok(LockGuard { _file: file })
}

pub(crate) fn shared(path: &Path) -> io::Result<LockGuard> {
    let file = open(path)?;
    file.lock_shared()?;
    Ok(LockGuard { _file: file })
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)
}

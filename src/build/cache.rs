//! The build cache: instruction cache key → the layer (and app metadata) it produced, plus a
//! per-layer list of directories (to apply Docker's "COPY into an existing directory" rule
//! without unpacking the image).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::image::layer::{self, LayerBlob};
use crate::image::store::write_atomic;
use crate::image::{Application, Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// `None` when the instruction changed no files.
    pub layer: Option<LayerBlob>,
    #[serde(default)]
    pub app: Option<Application>,
}

fn entry_path(store: &Store, key: &str) -> PathBuf {
    store.cache_dir().join("build").join(format!("{key}.json"))
}

/// A usable cache entry: its layer blob must still be in the store.
pub fn lookup(store: &Store, key: &str) -> Option<Entry> {
    let bytes = fs::read(entry_path(store, key)).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    match &entry.layer {
        Some(l) if !store.has_blob(&l.digest) => None,
        _ => Some(entry),
    }
}

pub fn store(store: &Store, key: &str, entry: &Entry) -> Result<(), StoreError> {
    let path = entry_path(store, key);
    let bytes = serde_json::to_vec(entry).map_err(|e| StoreError::Io {
        action: "encode a cache entry".into(),
        path: None,
        source: std::io::Error::other(e),
    })?;
    write_atomic(&path, &bytes).map_err(|e| StoreError::io("write", &path, e))
}

/// Directories a layer creates (paths without trailing `/`), cached by diff_id.
pub fn layer_dirs(store: &Store, blob: &LayerBlob) -> Result<Vec<String>, StoreError> {
    let path = store.cache_dir().join("dirs").join(format!("{}.json", blob.diff_id.hex()));
    if let Ok(bytes) = fs::read(&path)
        && let Ok(dirs) = serde_json::from_slice::<Vec<String>>(&bytes)
    {
        return Ok(dirs);
    }
    let reader = layer::open_layer(store, &blob.digest, &blob.media_type)?;
    let mut archive = tar::Archive::new(reader);
    let bad = |e: std::io::Error| StoreError::CorruptBlob { digest: blob.digest.clone(), reason: e.to_string() };
    let mut dirs = BTreeSet::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let p = entry.path().map_err(bad)?.to_string_lossy().trim_end_matches('/').trim_start_matches("./").to_owned();
        if entry.header().entry_type() == tar::EntryType::Directory {
            dirs.insert(p.clone());
        }
        // Parents of any entry are directories too.
        let mut parent = p.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            dirs.insert(up.to_owned());
            parent = up;
        }
    }
    let dirs: Vec<String> = dirs.into_iter().collect();
    if let Ok(bytes) = serde_json::to_vec(&dirs) {
        let _ = write_atomic(&path, &bytes);
    }
    Ok(dirs)
}

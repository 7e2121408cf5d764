//! Mark-and-sweep of blobs no `index.json` entry reaches.

use std::collections::HashSet;
use std::fs;

use super::{Store, StoreError};
use crate::image::digest::Digest;
use crate::image::media;

/// What a collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

impl Store {
    /// Removes every blob not reachable from a tagged image, and stale temp files.
    /// Waits for commands that have blobs in flight (they hold the GC lock shared).
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _gc = self.lock_gc_exclusive()?;
        let _index = self.lock_index()?;
        let mut live = HashSet::new();
        for entry in self.read_index()?.entries {
            self.mark(&entry.digest, &entry.media_type, &mut live)?;
        }
        let mut report = GcReport::default();
        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&name) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).map_err(|e| StoreError::io("remove", entry.path(), e))?;
            report.blobs_removed += 1;
            report.bytes_freed += size;
        }
        // Nobody holds the GC lock shared, so every temp file is left over from a crash.
        if let Ok(entries) = fs::read_dir(self.tmp_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
        Ok(report)
    }

    fn mark(&self, digest: &Digest, media_type: &str, live: &mut HashSet<String>) -> Result<(), StoreError> {
        if !live.insert(digest.hex().to_owned()) || !self.has_blob(digest) {
            return Ok(());
        }
        if media::is_index(media_type) {
            let index: serde_json::Value = self.read_json(digest)?;
            for m in index["manifests"].as_array().into_iter().flatten() {
                if let (Some(d), Some(mt)) = (m["digest"].as_str(), m["mediaType"].as_str())
                    && let Ok(d) = d.parse::<Digest>()
                {
                    self.mark(&d, mt, live)?;
                }
            }
        } else if media::is_manifest(media_type) {
            let manifest: serde_json::Value = self.read_json(digest)?;
            let config = std::iter::once(&manifest["config"]);
            let layers = manifest["layers"].as_array().into_iter().flatten();
            for d in config.chain(layers).filter_map(|d| d["digest"].as_str()) {
                if let Ok(d) = d.parse::<Digest>() {
                    live.insert(d.hex().to_owned());
                }
            }
        }
        Ok(())
    }
}

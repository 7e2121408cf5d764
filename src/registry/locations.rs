//! Where blobs are known to live on registries, so a push can mount a blob from another
//! repository of the same registry instead of uploading it again. Best effort: a lost entry
//! only costs an upload.

use std::collections::BTreeMap;

use crate::image::store::write_atomic;
use crate::image::{Digest, Store};

type Map = BTreeMap<String, Vec<String>>;

fn path(store: &Store, registry: &str) -> std::path::PathBuf {
    let safe: String =
        registry.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    store.cache_dir().join("registry").join(format!("{safe}.json"))
}

fn load(store: &Store, registry: &str) -> Map {
    std::fs::read(path(store, registry)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Records that `repository` on `registry` holds these blobs.
pub fn remember<'a>(store: &Store, registry: &str, repository: &str, blobs: impl Iterator<Item = &'a Digest>) {
    let mut map = load(store, registry);
    for d in blobs {
        let repos = map.entry(d.to_string()).or_default();
        if !repos.iter().any(|r| r == repository) {
            repos.push(repository.to_owned());
            if repos.len() > 8 {
                repos.remove(0);
            }
        }
    }
    if let Ok(bytes) = serde_json::to_vec(&map) {
        let _ = write_atomic(&path(store, registry), &bytes);
    }
}

/// Another repository on `registry` known to hold `digest`.
pub fn source_for(store: &Store, registry: &str, repository: &str, digest: &Digest) -> Option<String> {
    load(store, registry).get(&digest.to_string())?.iter().rev().find(|r| *r != repository).cloned()
}

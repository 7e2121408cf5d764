//! Plugin files from a cluster image in the local store: `plugins/` is unpacked from the
//! image's layers (never the `registry/` layer) into a scratch directory and read there.

use std::path::Path;

use super::{PluginSource, SourceKind};
use crate::image::store::StoreError;
use crate::image::{Digest, Image, Store, layer, media};

#[derive(Debug, thiserror::Error)]
pub enum ImagePluginError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading `plugins/` from the image's layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The plugin files of `image` (its first platform: plugins are shell text, the same on
/// every architecture): `plugins/*.yaml`/`*.yml` and packages' `plugins/<dir>/plugin.yaml`.
///
/// Reading them means reading every layer, so what was found is cached by manifest digest
/// (layers never change under a digest): a later run, check or delete reads one small file.
pub fn sources(store: &Store, image: &Image) -> Result<Vec<PluginSource>, ImagePluginError> {
    let Some(platform) = image.platforms.first() else { return Ok(Vec::new()) };
    let cache = store.cache_dir().join("plugin-sources").join(format!("{}.json", platform.manifest_digest.hex()));
    if let Some(cached) = std::fs::read(&cache).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        return Ok(cached);
    }
    let sources = read_layers(store, platform)?;
    if let Ok(bytes) = serde_json::to_vec(&sources) {
        // A cache that cannot be written only costs the next run this reading again.
        let _ = crate::image::store::write_atomic(&cache, &bytes);
    }
    Ok(sources)
}

fn read_layers(store: &Store, platform: &crate::image::PlatformImage) -> Result<Vec<PluginSource>, ImagePluginError> {
    let scratch =
        tempfile::tempdir().map_err(|source| ImagePluginError::Read { path: "a scratch directory".into(), source })?;
    let keep = |p: &Path| p.components().next().is_some_and(|c| c.as_os_str() == "plugins");
    for l in platform.manifest.layers().iter().filter(|l| !media::is_registry_layer(l)) {
        let digest = Digest::from_oci(l.digest()).map_err(|e| ImagePluginError::Layer {
            digest: l.digest().to_string(),
            source: Box::new(std::io::Error::other(e.to_string())),
        })?;
        let reader = layer::open_layer(store, &digest, l.media_type().as_ref())?;
        layer::apply_layer_where(reader, scratch.path(), &keep)
            .map_err(|e| ImagePluginError::Layer { digest: digest.to_string(), source: Box::new(e) })?;
    }
    read_dir(&scratch.path().join("plugins"))
}

/// Plugin files under a `plugins/` directory, in name order.
pub fn read_dir(dir: &Path) -> Result<Vec<PluginSource>, ImagePluginError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|source| ImagePluginError::Read { path: path.display().to_string(), source })
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    let mut sources = Vec::new();
    for path in names {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if path.is_dir() {
            let manifest = path.join("plugin.yaml");
            if manifest.is_file() {
                sources.push(PluginSource {
                    file: format!("plugins/{name}/plugin.yaml"),
                    text: read(&manifest)?,
                    kind: SourceKind::Package { dir: format!("plugins/{name}") },
                });
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            sources.push(PluginSource {
                file: format!("plugins/{name}"),
                text: read(&path)?,
                kind: SourceKind::ImageFile,
            });
        }
    }
    Ok(sources)
}

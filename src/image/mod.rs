//! The OCI image model and the local content-addressed store.
//!
//! Knows nothing of Kubefiles or hosts: names ([`ImageRef`]), digests, platforms, Sealer's
//! [`ImageExtension`], the on-disk [`store::Store`], and OCI/Docker archives ([`archive`]).

pub mod archive;
mod digest;
mod extension;
pub mod layer;
pub mod media;
mod platform;
mod reference;
pub mod store;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Serialize;

pub use digest::{Digest, DigestError, HashingWriter, VerifyingReader};
pub use extension::{AppType, Application, ImageExtension, ImageType, Launch};
pub use platform::{Platform, PlatformError};
pub use reference::{ImageRef, ImageRefError};
pub use store::{IndexEntry, Store, StoreError};

/// One platform's manifest and config, read from the store.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: Platform,
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub manifest_media_type: String,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
}

impl PlatformImage {
    /// Sealer's extension annotation, if the image has one.
    pub fn extension(&self) -> Result<Option<ImageExtension>, StoreError> {
        let Some(json) = self.manifest.annotations().as_ref().and_then(|a| a.get(media::ANNOTATION_SEALER_EXTENSION))
        else {
            return Ok(None);
        };
        serde_json::from_str(json).map(Some).map_err(|e| StoreError::BadJson {
            digest: self.manifest_digest.clone(),
            reason: format!("bad `{}` annotation: {e}", media::ANNOTATION_SEALER_EXTENSION),
        })
    }

    /// Total compressed size of the layers.
    pub fn layers_size(&self) -> u64 {
        self.manifest.layers().iter().map(|l| l.size()).sum()
    }
}

/// A tagged image with every platform it has.
#[derive(Debug, Clone)]
pub struct Image {
    pub entry: IndexEntry,
    /// One element for a single-platform image, several for an index.
    pub platforms: Vec<PlatformImage>,
    pub is_index: bool,
}

/// Image label naming the cluster runtime (Sealer's).
pub const RUNTIME_LABEL: &str = "cluster.alpha.sealer.io/cluster-runtime-type";

impl Image {
    pub fn name(&self) -> &str {
        self.entry.name.as_deref().unwrap_or("<none>")
    }

    /// The cluster runtime the image asks for (its [`RUNTIME_LABEL`]), if it names one.
    pub fn runtime_label(&self) -> Option<&str> {
        self.label(RUNTIME_LABEL)
    }

    /// A label of the image's config (every platform carries the same labels).
    pub fn label(&self, key: &str) -> Option<&str> {
        let config = self.platforms.first()?.config.config().as_ref()?;
        config.labels().as_ref()?.get(key).map(String::as_str)
    }

    /// The variant for `platform`, if the image has it.
    pub fn for_platform(&self, platform: &Platform) -> Option<&PlatformImage> {
        self.platforms.iter().find(|p| p.platform.matches(platform))
    }

    /// Every blob this image references (manifests, configs, layers and the index itself).
    pub fn blobs(&self) -> Vec<(Digest, u64, String)> {
        let mut out = vec![(self.entry.digest.clone(), self.entry.size, self.entry.media_type.clone())];
        for p in &self.platforms {
            if self.is_index {
                out.push((p.manifest_digest.clone(), p.manifest_size, p.manifest_media_type.clone()));
            }
            out.push((
                p.config_digest.clone(),
                p.manifest.config().size(),
                p.manifest.config().media_type().to_string(),
            ));
            for l in p.manifest.layers() {
                if let Ok(d) = Digest::from_oci(l.digest()) {
                    out.push((d, l.size(), l.media_type().to_string()));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

impl Store {
    /// Loads the image named `name`, or `None` if there is no such tag.
    pub fn image(&self, name: &ImageRef) -> Result<Option<Image>, StoreError> {
        match self.resolve(name)? {
            Some(entry) => self.image_at(entry).map(Some),
            None => Ok(None),
        }
    }

    /// Loads the image an index entry points at.
    pub fn image_at(&self, entry: IndexEntry) -> Result<Image, StoreError> {
        if media::is_index(&entry.media_type) {
            let index: ImageIndex = self.read_json(&entry.digest)?;
            let mut platforms = Vec::new();
            for m in index.manifests() {
                let digest = Digest::from_oci(m.digest())
                    .map_err(|e| StoreError::BadJson { digest: entry.digest.clone(), reason: e.to_string() })?;
                let mut image = self.platform_image(&digest, m.size(), m.media_type().as_ref())?;
                if let Some(p) = m.platform() {
                    image.platform = Platform::from_oci(p);
                }
                platforms.push(image);
            }
            return Ok(Image { entry, platforms, is_index: true });
        }
        let image = self.platform_image(&entry.digest, entry.size, &entry.media_type)?;
        Ok(Image { entry, platforms: vec![image], is_index: false })
    }

    fn platform_image(&self, digest: &Digest, size: u64, media_type: &str) -> Result<PlatformImage, StoreError> {
        let manifest: ImageManifest = self.read_json(digest)?;
        let config_digest = Digest::from_oci(manifest.config().digest())
            .map_err(|e| StoreError::BadJson { digest: digest.clone(), reason: e.to_string() })?;
        let config: ImageConfiguration = self.read_json(&config_digest)?;
        let platform = Platform::from_oci(
            &oci_spec::image::PlatformBuilder::default()
                .os(config.os().clone())
                .architecture(config.architecture().clone())
                .build()
                .unwrap_or_default(),
        );
        let platform = Platform { variant: config.variant().clone(), ..platform };
        Ok(PlatformImage {
            platform,
            manifest_digest: digest.clone(),
            manifest_size: size,
            manifest_media_type: media_type.to_owned(),
            manifest,
            config_digest,
            config,
        })
    }
}

/// JSON with object keys sorted, so the same document always has the same digest.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sort).collect()),
            other => other,
        }
    }
    serde_json::to_vec(&sort(serde_json::to_value(value)?))
}

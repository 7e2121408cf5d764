//! `--image-source`: container images taken from kiln's own store, local OCI archives, `docker
//! save` tars, OCI layout directories or (cargo feature `containerd`) the build host's
//! containerd, tried in the order given and before any registry, so images built or pulled
//! locally are packed without a registry and without network.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::image::archive::{self, ArchiveError, NoProgress};
use crate::image::{Digest, ImageRef, IndexEntry, Platform, Store, StoreError, media};

/// One `--image-source` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `store`: images in kiln's own store (built by `kiln build`, pulled or loaded earlier),
    /// by their exact name. Their blobs were verified when they were stored. (A directory
    /// called `store` is `./store`.)
    Store,
    /// An OCI archive, a `docker save` tar (either optionally gzipped) or an OCI layout directory.
    Path(PathBuf),
    /// `containerd[:NAMESPACE]`: the containerd at `$CONTAINERD_ADDRESS`
    /// (default `/run/containerd/containerd.sock`), namespace default `$CONTAINERD_NAMESPACE`
    /// or `default`, as `ctr` does.
    Containerd { namespace: Option<String> },
}

impl FromStr for ImageSource {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "store" {
            return Ok(Self::Store);
        }
        Ok(match s.strip_prefix("containerd") {
            Some("") => Self::Containerd { namespace: None },
            Some(ns) if ns.starts_with(':') && ns.len() > 1 => Self::Containerd { namespace: Some(ns[1..].to_owned()) },
            _ => Self::Path(PathBuf::from(s)),
        })
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store => f.write_str("store"),
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Containerd { namespace: Some(ns) } => write!(f, "containerd:{ns}"),
            Self::Containerd { namespace: None } => f.write_str("containerd"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image source `{source_name}`")]
    Archive {
        source_name: String,
        #[source]
        source: Box<ArchiveError>,
    },
    #[error("image source `{source_name}`: {reason}")]
    Containerd { source_name: String, reason: String },
    #[error("image source `{source_name}` has `{image}` without its {platform} variant (it has {available})")]
    MissingPlatform { source_name: String, image: String, platform: String, available: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A container image found in a local source, its blobs in the store.
#[derive(Debug, Clone)]
pub struct LocalImage {
    pub entry: IndexEntry,
    /// Where it came from, as shown by `kiln inspect`.
    pub origin: String,
}

/// Every archive and layout source, imported; the store and containerd are asked per image, in
/// the order they were given.
#[derive(Debug, Default)]
pub struct LocalSources {
    by_name: HashMap<String, LocalImage>,
    by_digest: HashMap<Digest, LocalImage>,
    asked: Vec<AskedSource>,
}

/// A source looked up image by image rather than read whole first.
#[derive(Debug)]
enum AskedSource {
    Store,
    Containerd(Option<String>),
}

impl LocalSources {
    /// Imports the blobs of every archive and layout source into the store (verified). The
    /// caller holds the store's GC lock until the build is tagged.
    pub fn open(store: &Store, sources: &[ImageSource]) -> Result<Self, SourceError> {
        let mut local = Self::default();
        for source in sources {
            match source {
                ImageSource::Path(path) => {
                    let images = archive::import(store, path, &NoProgress)
                        .map_err(|e| SourceError::Archive { source_name: source.to_string(), source: Box::new(e) })?;
                    for image in images {
                        let found = LocalImage {
                            entry: IndexEntry {
                                name: None,
                                digest: image.digest.clone(),
                                media_type: image.media_type.clone(),
                                size: image.size,
                            },
                            origin: format!("archive {}", path.display()),
                        };
                        // The first source naming an image wins, as with search paths.
                        for name in &image.names {
                            local.by_name.entry(name.to_string()).or_insert_with(|| found.clone());
                        }
                        local.by_digest.entry(image.digest).or_insert(found);
                    }
                }
                ImageSource::Store => local.asked.push(AskedSource::Store),
                ImageSource::Containerd { namespace } => local.asked.push(AskedSource::Containerd(namespace.clone())),
            }
        }
        Ok(local)
    }

    /// The image `wanted` names, reduced to `platforms` when it is an index, or `None` when no
    /// local source has it.
    pub async fn find(
        &self,
        store: &Store,
        wanted: &ImageRef,
        platforms: &[Platform],
    ) -> Result<Option<LocalImage>, SourceError> {
        let hit = match wanted.digest() {
            Some(d) => self.by_digest.get(&d).or_else(|| self.by_name.get(&wanted.to_string())),
            None => self.by_name.get(&wanted.to_string()),
        };
        if let Some(hit) = hit {
            let entry = select_platforms(store, &hit.entry, platforms, &hit.origin, wanted)?;
            return Ok(Some(LocalImage { entry, origin: hit.origin.clone() }));
        }
        for source in &self.asked {
            let found = match source {
                AskedSource::Store => match store.resolve(wanted)? {
                    Some(entry) => {
                        let origin = "kiln store".to_owned();
                        let entry = select_platforms(store, &entry, platforms, &origin, wanted)?;
                        Some(LocalImage { entry: IndexEntry { name: None, ..entry }, origin })
                    }
                    None => None,
                },
                AskedSource::Containerd(namespace) => {
                    containerd_source::find(store, namespace.as_deref(), wanted, platforms).await?
                }
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

/// A single-platform image is used as it is; an index keeps only the build's platforms, like a
/// registry pull, and must have each of them.
fn select_platforms(
    store: &Store,
    entry: &IndexEntry,
    platforms: &[Platform],
    origin: &str,
    wanted: &ImageRef,
) -> Result<IndexEntry, SourceError> {
    if !media::is_index(&entry.media_type) {
        return Ok(entry.clone());
    }
    let mut index: serde_json::Value = serde_json::from_slice(&store.read_blob(&entry.digest)?)
        .map_err(|e| StoreError::BadJson { digest: entry.digest.clone(), reason: e.to_string() })?;
    let children = index["manifests"].as_array().cloned().unwrap_or_default();
    let platform_of = Platform::of_descriptor;
    let mut chosen = Vec::new();
    for platform in platforms {
        let Some(child) = children.iter().find(|c| platform_of(c).is_some_and(|p| p.matches(platform))) else {
            return Err(SourceError::MissingPlatform {
                source_name: origin.to_owned(),
                image: wanted.to_string(),
                platform: platform.to_string(),
                available: children
                    .iter()
                    .filter_map(platform_of)
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if !chosen.contains(child) {
            chosen.push(child.clone());
        }
    }
    if chosen.len() == children.len() {
        return Ok(entry.clone());
    }
    if let [only] = chosen.as_slice() {
        let digest: Digest =
            only["digest"].as_str().unwrap_or_default().parse().map_err(|e: crate::image::DigestError| {
                StoreError::BadJson { digest: entry.digest.clone(), reason: e.to_string() }
            })?;
        return Ok(IndexEntry {
            name: None,
            digest,
            media_type: only["mediaType"].as_str().unwrap_or(media::OCI_MANIFEST).to_owned(),
            size: only["size"].as_u64().unwrap_or(0),
        });
    }
    index["manifests"] = serde_json::Value::Array(chosen);
    let bytes = crate::image::canonical_json(&index)
        .map_err(|e| StoreError::BadJson { digest: entry.digest.clone(), reason: e.to_string() })?;
    let (digest, size) = store.write_blob(&bytes)?;
    Ok(IndexEntry { name: None, digest, media_type: entry.media_type.clone(), size })
}

#[cfg(feature = "containerd")]
mod containerd_source {
    use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
    use containerd_client::tonic::{Code, Request};
    use containerd_client::with_namespace;
    use std::io::Write;

    use super::{LocalImage, SourceError, select_platforms};
    use crate::image::{Digest, ImageRef, IndexEntry, Platform, Store, media};

    fn address() -> String {
        std::env::var("CONTAINERD_ADDRESS").unwrap_or_else(|_| "/run/containerd/containerd.sock".into())
    }

    /// Asks containerd for `wanted`; copies (verifying) the blobs of the build's platforms.
    pub(super) async fn find(
        store: &Store,
        namespace: Option<&str>,
        wanted: &ImageRef,
        platforms: &[Platform],
    ) -> Result<Option<LocalImage>, SourceError> {
        let namespace = namespace
            .map(str::to_owned)
            .or_else(|| std::env::var("CONTAINERD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let source_name = format!("containerd:{namespace}");
        let fail = |reason: String| SourceError::Containerd { source_name: source_name.clone(), reason };
        let address = address();
        let client = containerd_client::Client::from_path(&address)
            .await
            .map_err(|e| fail(format!("cannot connect to {address}: {e}")))?;
        let request = with_namespace!(GetImageRequest { name: wanted.to_string() }, namespace);
        let image = match client.images().get(request).await {
            Ok(r) => r.into_inner().image,
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(fail(format!("get image `{wanted}`: {}", status.message()))),
        };
        let Some(target) = image.and_then(|i| i.target) else { return Ok(None) };
        let top: Digest = target.digest.parse().map_err(|e| fail(format!("image `{wanted}`: {e}")))?;
        let reader = ContentReader { client: &client, namespace: &namespace, store, fail: &fail };
        reader.copy(&top).await?;
        let origin = source_name.clone();
        let mut entry =
            IndexEntry { name: None, digest: top, media_type: target.media_type.clone(), size: target.size as u64 };
        // Unpulled platforms of an index are normal in containerd: fetch only the children
        // selected for the build, so a missing one fails with the platform named.
        if media::is_index(&entry.media_type) {
            entry = select_platforms(store, &entry, platforms, &origin, wanted)?;
        }
        let manifests: Vec<Digest> = if media::is_index(&entry.media_type) {
            let index: serde_json::Value = serde_json::from_slice(&store.read_blob(&entry.digest)?)
                .map_err(|e| fail(format!("index {}: {e}", entry.digest)))?;
            index["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["digest"].as_str()?.parse().ok())
                .collect()
        } else {
            vec![entry.digest.clone()]
        };
        for manifest in manifests {
            reader.copy(&manifest).await?;
            let doc: serde_json::Value = serde_json::from_slice(&store.read_blob(&manifest)?)
                .map_err(|e| fail(format!("manifest {manifest}: {e}")))?;
            for blob in std::iter::once(&doc["config"]).chain(doc["layers"].as_array().into_iter().flatten()) {
                let digest: Digest = blob["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| fail(format!("manifest {manifest}: {e}")))?;
                reader.copy(&digest).await?;
            }
        }
        Ok(Some(LocalImage { entry, origin }))
    }

    struct ContentReader<'a, F: Fn(String) -> SourceError> {
        client: &'a containerd_client::Client,
        namespace: &'a str,
        store: &'a Store,
        fail: &'a F,
    }

    impl<F: Fn(String) -> SourceError> ContentReader<'_, F> {
        /// Streams one blob into the store unless it is there; its digest is checked on commit.
        async fn copy(&self, digest: &Digest) -> Result<(), SourceError> {
            if self.store.has_blob(digest) {
                return Ok(());
            }
            let request =
                with_namespace!(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }, self.namespace);
            let mut stream = self
                .client
                .content()
                .read(request)
                .await
                .map_err(|s| (self.fail)(format!("read blob {digest}: {}", s.message())))?
                .into_inner();
            let mut writer = self.store.blob_writer()?;
            while let Some(chunk) =
                stream.message().await.map_err(|s| (self.fail)(format!("read blob {digest}: {}", s.message())))?
            {
                writer.write_all(&chunk.data).map_err(|e| (self.fail)(format!("write blob {digest}: {e}")))?;
            }
            writer.commit_expecting(digest)?;
            Ok(())
        }
    }
}

#[cfg(not(feature = "containerd"))]
mod containerd_source {
    use super::{LocalImage, SourceError};
    use crate::image::{ImageRef, Platform, Store};

    pub(super) async fn find(
        _: &Store,
        namespace: Option<&str>,
        _: &ImageRef,
        _: &[Platform],
    ) -> Result<Option<LocalImage>, SourceError> {
        Err(SourceError::Containerd {
            source_name: namespace.map_or_else(|| "containerd".into(), |ns| format!("containerd:{ns}")),
            reason: "this kiln was built without the `containerd` cargo feature \
                     (build with `cargo build --features containerd`; it needs protobuf-compiler)"
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_values() {
        assert_eq!("containerd".parse::<ImageSource>().unwrap(), ImageSource::Containerd { namespace: None });
        assert_eq!(
            "containerd:k8s.io".parse::<ImageSource>().unwrap(),
            ImageSource::Containerd { namespace: Some("k8s.io".into()) }
        );
        assert_eq!("./containerd.tar".parse::<ImageSource>().unwrap(), ImageSource::Path("./containerd.tar".into()));
        assert_eq!("containerd:".parse::<ImageSource>().unwrap(), ImageSource::Path("containerd:".into()));
        assert_eq!("store".parse::<ImageSource>().unwrap(), ImageSource::Store);
        assert_eq!("./store".parse::<ImageSource>().unwrap(), ImageSource::Path("./store".into()));
    }
}

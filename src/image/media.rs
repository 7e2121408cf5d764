//! Media types kiln reads and writes.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The annotation OCI image layouts use to name an entry of `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Sealer's manifest annotation carrying the [`super::ImageExtension`] JSON.
pub const ANNOTATION_SEALER_EXTENSION: &str = "sealer.image.extension";
/// Sealer's manifest annotation listing the container images an image carries.
pub const ANNOTATION_SEALER_CONTAINER_IMAGES: &str = "sealer.image.container.images";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// On a layer descriptor: what the layer holds, when kiln must treat it apart.
pub const ANNOTATION_LAYER_CONTENT: &str = "io.kiln.layer.content";
/// The `registry/` content (docker-distribution layout), needed only on registry hosts.
pub const LAYER_CONTENT_REGISTRY: &str = "registry";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// How a layer blob is compressed, judged by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") || media_type == DOCKER_LAYER_GZIP {
            Some(Self::Gzip)
        } else if media_type.ends_with("+zstd") {
            Some(Self::Zstd)
        } else if media_type.ends_with(".tar") || media_type.ends_with("diff.tar") {
            Some(Self::None)
        } else {
            None
        }
    }

    pub fn layer_media_type(self) -> &'static str {
        match self {
            Self::None => OCI_LAYER_TAR,
            Self::Gzip => OCI_LAYER_GZIP,
            Self::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// Whether a layer descriptor is marked as the `registry/` content
/// ([`ANNOTATION_LAYER_CONTENT`] = [`LAYER_CONTENT_REGISTRY`]).
pub fn is_registry_layer(layer: &oci_spec::image::Descriptor) -> bool {
    layer
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LAYER_CONTENT))
        .is_some_and(|v| v == LAYER_CONTENT_REGISTRY)
}

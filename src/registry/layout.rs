//! The docker-distribution filesystem layout (what `docker-registry` serves and Sealer images
//! carry under `registry/`), written from images in the local store.
//!
//! ```text
//! docker/registry/v2/blobs/sha256/<ab>/<hex>/data
//! docker/registry/v2/repositories/<repo>/_layers/sha256/<hex>/link
//! docker/registry/v2/repositories/<repo>/_manifests/revisions/sha256/<hex>/link
//! docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link
//! docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/index/sha256/<hex>/link
//! ```
//! Repository paths: images from docker.io keep Sealer's path (`library/nginx`); images from
//! any other registry are prefixed with its host (`quay.io/coreos/etcd`), so the same path on two
//! registries never collides. Docker Hub namespaces cannot contain dots, so neither can clash
//! with a prefixed one. Mirrors reach prefixed repositories with containerd's
//! `override_path`. A registry's port is written `host_port` (`:` is not allowed in paths).

use std::collections::BTreeMap;

use crate::image::{Digest, ImageRef};

/// Where an image lives in the in-cluster registry. A port is written `host_port`, since
/// `:` is not allowed in repository names (`registry.local:5000/a` → `registry.local_5000/a`).
pub fn repository_for(image: &ImageRef) -> String {
    if image.registry() == "docker.io" {
        image.repository().to_owned()
    } else {
        format!("{}/{}", image.registry().replace(':', "_"), image.repository())
    }
}

/// One tagged image to place in the layout: its top-level document and every blob it needs.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    pub repository: String,
    /// The tag, if the image was referenced by one.
    pub tag: Option<String>,
    /// Manifests and indexes (the top document first).
    pub manifests: Vec<Digest>,
    /// Configs and layers.
    pub layers: Vec<Digest>,
}

/// Every file of the layout as (relative path, content source), sorted: `Blob(digest)` for
/// blob data, `Text` for link files. Content-addressed blobs appear once however many
/// repositories use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Blob(Digest),
    Text(String),
}

pub fn plan(images: &[LayoutImage]) -> BTreeMap<String, Entry> {
    let mut files = BTreeMap::new();
    let v2 = "docker/registry/v2";
    for image in images {
        let repo = format!("{v2}/repositories/{}", image.repository);
        for d in image.manifests.iter().chain(&image.layers) {
            files.insert(format!("{v2}/blobs/sha256/{}/{}/data", &d.hex()[..2], d.hex()), Entry::Blob(d.clone()));
        }
        for d in &image.layers {
            files.insert(format!("{repo}/_layers/sha256/{}/link", d.hex()), Entry::Text(d.to_string()));
        }
        for d in &image.manifests {
            files.insert(format!("{repo}/_manifests/revisions/sha256/{}/link", d.hex()), Entry::Text(d.to_string()));
        }
        if let (Some(tag), Some(top)) = (&image.tag, image.manifests.first()) {
            files.insert(format!("{repo}/_manifests/tags/{tag}/current/link"), Entry::Text(top.to_string()));
            files.insert(
                format!("{repo}/_manifests/tags/{tag}/index/sha256/{}/link", top.hex()),
                Entry::Text(top.to_string()),
            );
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_path_on_two_registries_does_not_collide() {
        let a: ImageRef = "quay.io/team/app:1".parse().unwrap();
        let b: ImageRef = "ghcr.io/team/app:1".parse().unwrap();
        let c: ImageRef = "team/app:1".parse().unwrap();
        let repos: Vec<String> = [a, b, c].iter().map(repository_for).collect();
        assert_eq!(repos, ["quay.io/team/app", "ghcr.io/team/app", "team/app"]);
        assert_eq!(repository_for(&"nginx".parse().unwrap()), "library/nginx");
        assert_eq!(repository_for(&"registry.local:5000/a/b:1".parse().unwrap()), "registry.local_5000/a/b");
    }

    #[test]
    fn plan_links_and_stores_shared_blobs_once() {
        let m1 = Digest::of(b"m1");
        let m2 = Digest::of(b"m2");
        let shared = Digest::of(b"shared layer");
        let images = vec![
            LayoutImage {
                repository: "library/a".into(),
                tag: Some("1".into()),
                manifests: vec![m1.clone()],
                layers: vec![shared.clone()],
            },
            LayoutImage {
                repository: "quay.io/x/b".into(),
                tag: Some("2".into()),
                manifests: vec![m2.clone()],
                layers: vec![shared.clone()],
            },
        ];
        let files = plan(&images);
        let blobs = files.values().filter(|e| matches!(e, Entry::Blob(_))).count();
        assert_eq!(blobs, 3, "the shared layer is stored once");
        let tag = "docker/registry/v2/repositories/quay.io/x/b/_manifests/tags/2/current/link".to_owned();
        assert_eq!(files[&tag], Entry::Text(m2.to_string()));
        assert!(
            files.contains_key(&format!(
                "docker/registry/v2/repositories/library/a/_layers/sha256/{}/link",
                shared.hex()
            ))
        );
    }
}

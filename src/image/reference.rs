//! Image names with Docker's grammar and normalisation (`nginx` → `docker.io/library/nginx:latest`).

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::Reference;

use super::Digest;

/// A normalised image reference: registry, repository, and a tag and/or digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    inner: Reference,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference `{input}`: {reason}")]
pub struct ImageRefError {
    input: String,
    reason: String,
}

impl ImageRef {
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| d.parse().ok())
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// A copy with `tag` in place of the current tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Self {
        Self { inner: Reference::with_tag(self.registry().into(), self.repository().into(), tag.into()) }
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ImageRefError { input: s.to_owned(), reason };
        if s.chars().any(|c| c.is_ascii_uppercase()) {
            // Docker rejects upper case in repository names; tags may have it.
            let name_part = s.split('@').next().unwrap_or(s);
            let last_slash = name_part.rfind('/').map_or(0, |i| i + 1);
            let repo_end = name_part[last_slash..].find(':').map_or(name_part.len(), |i| i + last_slash);
            let first_slash = name_part.find('/');
            let domain_like = first_slash.is_some_and(|i| {
                let d = &name_part[..i];
                d.contains('.') || d.contains(':') || d == "localhost"
            });
            let check_from = if domain_like { first_slash.map_or(0, |i| i + 1) } else { 0 };
            if name_part[check_from..repo_end].chars().any(|c| c.is_ascii_uppercase()) {
                return Err(err("repository names must be lowercase".into()));
            }
        }
        let inner = Reference::try_from(s).map_err(|e| err(e.to_string()))?;
        if inner.digest().is_some_and(|d| !d.starts_with("sha256:")) {
            return Err(err("only sha256 digests are supported".into()));
        }
        Ok(Self { inner })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        s.parse::<ImageRef>().unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("sealerio/kubernetes:v1.22"), "docker.io/sealerio/kubernetes:v1.22");
        assert_eq!(norm("index.docker.io/library/nginx:1"), "docker.io/library/nginx:1");
        assert_eq!(norm("localhost:5000/a/b:c"), "localhost:5000/a/b:c");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm(&format!("reg.io:443/x@{d}")), format!("reg.io:443/x@{d}"));
        let both: ImageRef = format!("reg.io/x:1@{d}").parse().unwrap();
        assert_eq!(both.tag(), Some("1"));
        assert!(both.digest().is_some());
    }

    #[test]
    fn rejects_bad_names() {
        assert!("".parse::<ImageRef>().is_err());
        assert!("Nginx".parse::<ImageRef>().is_err());
        assert!("a b".parse::<ImageRef>().is_err());
        assert!("x@sha256:abc".parse::<ImageRef>().is_err());
        assert!("reg.io/x:UPPER".parse::<ImageRef>().is_ok());
    }
}

//! `os/arch[/variant]` platforms, normalised the way containerd does.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Arch, Os, Platform as OciPlatform, PlatformBuilder};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid platform `{0}`: expected os/arch[/variant], like linux/amd64 or linux/arm64")]
pub struct PlatformError(String);

impl Platform {
    /// The `platform` of an index entry in JSON form (`None` when absent or malformed).
    pub fn of_descriptor(entry: &serde_json::Value) -> Option<Self> {
        let p = &entry["platform"];
        let mut s = format!("{}/{}", p["os"].as_str()?, p["architecture"].as_str()?);
        if let Some(v) = p["variant"].as_str() {
            s = format!("{s}/{v}");
        }
        s.parse().ok()
    }

    pub fn linux(arch: &str) -> Self {
        Self::normalised("linux", arch, None)
    }

    /// The platform this kiln binary runs on.
    pub fn host() -> Self {
        Self::linux(std::env::consts::ARCH)
    }

    fn normalised(os: &str, arch: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = match (arch, variant) {
            ("x86_64" | "x86-64" | "amd64", _) => ("amd64", None),
            ("aarch64" | "arm64", Some("v8") | None) => ("arm64", None),
            ("aarch64" | "arm64", Some(v)) => ("arm64", Some(v)),
            ("armhf" | "arm", None) => ("arm", Some("v7")),
            ("armel", None) => ("arm", Some("v6")),
            (a, v) => (a, v),
        };
        Self { os: os.to_ascii_lowercase(), architecture: architecture.to_owned(), variant: variant.map(str::to_owned) }
    }

    /// Whether an image built for `self` runs on `want` (variants only matter when both set).
    pub fn matches(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (self.variant.is_none() || want.variant.is_none() || self.variant == want.variant)
    }

    pub fn to_oci(&self) -> OciPlatform {
        let mut b = PlatformBuilder::default()
            .os(Os::from(self.os.as_str()))
            .architecture(Arch::from(self.architecture.as_str()));
        if let Some(v) = &self.variant {
            b = b.variant(v.clone());
        }
        b.build().unwrap_or_else(|_| unreachable!("os and architecture are set"))
    }

    pub fn from_oci(p: &OciPlatform) -> Self {
        Self::normalised(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref())
    }

    /// Parses a comma-separated list, as `--platform linux/amd64,linux/arm64` gives.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, PlatformError> {
        let mut out: Vec<Self> = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p: Self = p.parse()?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.is_empty() {
            return Err(PlatformError(s.to_owned()));
        }
        Ok(out)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self::normalised(os, arch, None)),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Self::normalised(os, arch, Some(v))),
            // `arm64` alone means linux/arm64, as in Sealer's `--platform`.
            [arch] if ok(arch) && !arch.eq_ignore_ascii_case("linux") => Ok(Self::normalised("linux", arch, None)),
            _ => Err(PlatformError(s.to_owned())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_normalise() {
        assert_eq!("linux/x86_64".parse::<Platform>().unwrap().to_string(), "linux/amd64");
        assert_eq!("linux/aarch64/v8".parse::<Platform>().unwrap().to_string(), "linux/arm64");
        assert_eq!("arm64".parse::<Platform>().unwrap().to_string(), "linux/arm64");
        assert_eq!("linux/arm/v7".parse::<Platform>().unwrap().variant.as_deref(), Some("v7"));
        assert!("linux/".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
        let l = Platform::parse_list("linux/amd64, linux/arm64,linux/amd64").unwrap();
        assert_eq!(l.len(), 2);
        assert!(Platform::parse_list(" , ").is_err());
    }

    #[test]
    fn oci_round_trip() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(Platform::from_oci(&p.to_oci()), p);
    }
}

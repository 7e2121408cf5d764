//! The kubelet's hard eviction thresholds for disk, and whether a host's filesystems are
//! already below them. A kubelet on a filesystem under `nodefs.available` (10 % by default) or
//! `imagefs.available` (15 %) taints its node with disk pressure and evicts every pod the
//! moment it starts, which looks like a broken cluster rather than a full disk; preflight says
//! so before anything is installed.

use serde_json::Value;

use crate::clusterfile::RawDocument;

/// Free space a filesystem must keep: a share of its size or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Percent(f64),
    Bytes(u64),
}

impl Threshold {
    /// A kubelet signal value: `10%`, `2Gi`, `500M`, `1073741824`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            return percent.trim().parse().ok().filter(|p: &f64| (0.0..=100.0).contains(p)).map(Self::Percent);
        }
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit: f64 = match suffix {
            "" => 1.0,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        Some(Self::Bytes((number * unit) as u64))
    }

    /// Bytes that must stay free on a filesystem of `size` bytes.
    fn bytes_of(self, size: u64) -> u64 {
        match self {
            Self::Percent(p) => (size as f64 * p / 100.0).ceil() as u64,
            Self::Bytes(b) => b,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Percent(p) => write!(f, "{p} %"),
            Self::Bytes(b) => write!(f, "{}", crate::output::human_size(*b)),
        }
    }
}

/// A filesystem's size and the space available to unprivileged writers (as `df` and the
/// kubelet count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FsUsage {
    pub size_bytes: u64,
    pub available_bytes: u64,
}

/// Where the kubelet's threshold came from, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    KubeletDefault,
    Clusterfile,
}

/// The kubelet's disk thresholds, as the Clusterfile sets them or the kubelet's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskEviction {
    pub nodefs_available: Option<Threshold>,
    pub imagefs_available: Option<Threshold>,
    pub source: Source,
}

impl Default for DiskEviction {
    /// The kubelet's own `evictionHard` defaults.
    fn default() -> Self {
        Self {
            nodefs_available: Some(Threshold::Percent(10.0)),
            imagefs_available: Some(Threshold::Percent(15.0)),
            source: Source::KubeletDefault,
        }
    }
}

impl DiskEviction {
    /// From the Clusterfile's KubeletConfiguration: an `evictionHard` there replaces the
    /// defaults as a whole (the kubelet leaves signals it does not name unset).
    pub fn from_documents(documents: &[RawDocument]) -> Self {
        let eviction_hard = documents
            .iter()
            .filter(|d| d.kind == "KubeletConfiguration")
            .filter_map(|d| serde_saphyr::from_str::<Value>(&d.text).ok())
            .filter_map(|v| v.get("evictionHard").cloned())
            .next_back();
        let Some(Value::Object(signals)) = eviction_hard else { return Self::default() };
        let signal = |name: &str| signals.get(name).and_then(Value::as_str).and_then(Threshold::parse);
        Self {
            nodefs_available: signal("nodefs.available"),
            imagefs_available: signal("imagefs.available"),
            source: Source::Clusterfile,
        }
    }

    /// Why the kubelet would evict pods at once on a host whose kubelet directory has `nodefs`
    /// and whose containerd directory has `imagefs`; `None` when both are above the thresholds.
    pub fn shortfall(&self, nodefs: FsUsage, imagefs: FsUsage) -> Option<String> {
        let mut short = Vec::new();
        for (signal, threshold, usage, dir) in [
            ("nodefs.available", self.nodefs_available, nodefs, "/var/lib/kubelet"),
            ("imagefs.available", self.imagefs_available, imagefs, "/var/lib/containerd"),
        ] {
            let Some(threshold) = threshold else { continue };
            if usage.available_bytes < threshold.bytes_of(usage.size_bytes) {
                short.push(format!(
                    "{dir}: {} free of {} ({:.1} %), under the kubelet's {signal} {threshold}",
                    crate::output::human_size(usage.available_bytes),
                    crate::output::human_size(usage.size_bytes),
                    usage.available_bytes as f64 * 100.0 / usage.size_bytes.max(1) as f64,
                ));
            }
        }
        (!short.is_empty()).then(|| short.join("; "))
    }

    /// What the row says when the host has room.
    pub fn describe(&self) -> String {
        let show = |t: Option<Threshold>| t.map_or_else(|| "unset".to_owned(), |t| t.to_string());
        let from = match self.source {
            Source::KubeletDefault => "the kubelet's defaults",
            Source::Clusterfile => "the Clusterfile's evictionHard",
        };
        format!(
            "above nodefs.available {} and imagefs.available {} ({from})",
            show(self.nodefs_available),
            show(self.imagefs_available)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn usage(size_gib: u64, free_gib: u64) -> FsUsage {
        FsUsage { size_bytes: size_gib * GIB, available_bytes: free_gib * GIB }
    }

    #[test]
    fn thresholds_parse_as_the_kubelet_writes_them() {
        assert_eq!(Threshold::parse("10%"), Some(Threshold::Percent(10.0)));
        assert_eq!(Threshold::parse("2Gi"), Some(Threshold::Bytes(2 * GIB)));
        assert_eq!(Threshold::parse("500M"), Some(Threshold::Bytes(500_000_000)));
        assert_eq!(Threshold::parse("1024"), Some(Threshold::Bytes(1024)));
        for bad in ["", "ten%", "120%", "5Qi", "Gi"] {
            assert_eq!(Threshold::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_full_disk_under_the_default_thresholds_is_named_with_its_numbers() {
        let defaults = DiskEviction::default();
        assert_eq!(defaults.shortfall(usage(250, 100), usage(250, 100)), None);
        // 20 GiB of 250 (8 %): under both default thresholds.
        let why = defaults.shortfall(usage(250, 20), usage(250, 20)).unwrap();
        assert!(
            why.contains(
                "/var/lib/kubelet: 20.00 GiB free of 250.00 GiB (8.0 %), under the kubelet's nodefs.available 10 %"
            ),
            "{why}"
        );
        assert!(why.contains("imagefs.available 15 %"), "{why}");
        // 12 % free: only the image filesystem's 15 % is missed.
        let why = defaults.shortfall(usage(100, 12), usage(100, 12)).unwrap();
        assert!(!why.contains("nodefs") && why.contains("imagefs"), "{why}");
    }

    #[test]
    fn the_clusterfile_eviction_hard_replaces_the_defaults() {
        let doc = |text: &str| RawDocument {
            kind: "KubeletConfiguration".into(),
            text: text.into(),
            line: 1,
            file: "Clusterfile".into(),
        };
        let set = DiskEviction::from_documents(&[doc(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nevictionHard:\n  nodefs.available: 2Gi\n  imagefs.available: \"3%\"\n",
        )]);
        assert_eq!(set.nodefs_available, Some(Threshold::Bytes(2 * GIB)));
        assert_eq!(set.imagefs_available, Some(Threshold::Percent(3.0)));
        assert_eq!(set.source, Source::Clusterfile);
        assert_eq!(set.shortfall(usage(250, 20), usage(250, 20)), None);
        assert!(set.describe().contains("the Clusterfile's evictionHard"));
        // Only memory named: the disk signals are unset, nothing to check.
        let memory_only = DiskEviction::from_documents(&[doc("evictionHard:\n  memory.available: 100Mi\n")]);
        assert_eq!(memory_only.shortfall(usage(250, 1), usage(250, 1)), None);
        // No evictionHard at all: the kubelet's defaults.
        assert_eq!(DiskEviction::from_documents(&[doc("maxPods: 50\n")]), DiskEviction::default());
    }
}
